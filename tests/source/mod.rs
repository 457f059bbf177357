//! Reading the crate's sources in tests: which items are test code (`#[cfg(test)]`).

/// Whether `attrs` hold a `#[cfg(...)]` that is only true under test (`test`, or `all(.., test, ..)`).
pub fn test_only(attrs: &[syn::Attribute]) -> bool {
    fn requires_test(meta: &syn::Meta) -> bool {
        match meta {
            syn::Meta::Path(p) => p.is_ident("test"),
            syn::Meta::List(l) if l.path.is_ident("all") => l
                .parse_args_with(
                    syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
                )
                .is_ok_and(|metas| metas.iter().any(requires_test)),
            _ => false,
        }
    }
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|meta| requires_test(&meta))
    })
}

/// Whether `item` is test code.
pub fn test_item(item: &syn::Item) -> bool {
    let attrs: &[syn::Attribute] = match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    };
    test_only(attrs)
}

/// Whether `item` (in an `impl` block) is test code.
pub fn test_impl_item(item: &syn::ImplItem) -> bool {
    let attrs: &[syn::Attribute] = match item {
        syn::ImplItem::Const(i) => &i.attrs,
        syn::ImplItem::Fn(i) => &i.attrs,
        syn::ImplItem::Type(i) => &i.attrs,
        syn::ImplItem::Macro(i) => &i.attrs,
        _ => &[],
    };
    test_only(attrs)
}

/// The `Visit` methods that leave test code inside `impl` blocks and function bodies out (`visit_item`
/// is each visitor's own, calling [`test_item`]): `skip_test_impl_items_and_stmts!('ast);`.
macro_rules! skip_test_impl_items_and_stmts {
    ($l:lifetime) => {
        fn visit_impl_item(&mut self, item: &$l syn::ImplItem) {
            if !$crate::source::test_impl_item(item) {
                syn::visit::visit_impl_item(self, item);
            }
        }

        fn visit_stmt(&mut self, stmt: &$l syn::Stmt) {
            if let syn::Stmt::Item(item) = stmt {
                return self.visit_item(item);
            }
            syn::visit::visit_stmt(self, stmt);
        }
    };
}
