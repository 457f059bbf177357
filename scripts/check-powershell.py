#!/usr/bin/env python3
"""Syntax check for PowerShell scripts without PowerShell: parses with tree-sitter-powershell.

Usage: check-powershell.py [--assignments] [FILE]    (no FILE or "-": read standard input)

Prints every ERROR or MISSING node of the parse tree as LINE:COLUMN (1-based) with a snippet, and exits
1 if there is any, 0 otherwise; 2 when the Python modules are missing (install them with
`pip install -r scripts/requirements-emulator.txt`).

The grammar knows only the ASCII quotes, while PowerShell also ends a '...' string at U+2018, U+2019,
U+201A and U+201B (and a "..." string at U+201C, U+201D and U+201E) unless the quote is doubled. A
value that relies on the grammar's view would parse here and break on Windows, so those rules are
checked on top of the grammar and reported like parse errors.

--assignments also prints, as the last line, one JSON object describing the script's top-level
assignment statements in order: {"assignments": [{"line": N, "variable": "NAME", "operator": "=",
"literal": true|false, "value": "decoded single-quoted string" | null}, ...]}. "literal" is true only when
the whole right-hand side is one single-quoted string; "value" is then its content as PowerShell reads it.
"""

import json
import sys

SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"
DOUBLE_QUOTES = '"\u201c\u201d\u201e'


def load_parser():
    try:
        import tree_sitter
        import tree_sitter_powershell
    except ImportError as e:
        print(
            f"check-powershell: missing Python module ({e}); install the pinned tree-sitter and "
            "tree-sitter-powershell with: pip install -r scripts/requirements-emulator.txt",
            file=sys.stderr,
        )
        sys.exit(2)
    language = tree_sitter.Language(tree_sitter_powershell.language())
    return tree_sitter.Parser(language)


def snippet(source, start, end, width=60):
    text = source[start:end].decode("utf-8", "replace")
    if not text:
        text = source[start : start + 20].decode("utf-8", "replace")
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= width else text[:width] + "..."


def position(node):
    row, column = node.start_point
    return f"{row + 1}:{column + 1}"


def walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


def decode_verbatim(text):
    """Content of a '...' string by PowerShell's rule: any of the five single quotes ends it unless the
    next character is one too (then the second one stands for itself). Returns (value, None) or
    (None, offset of the quote that ends the string early)."""
    if len(text) < 2 or text[0] not in SINGLE_QUOTES or text[-1] not in SINGLE_QUOTES:
        return None, 0
    inner = text[1:-1]
    out = []
    i = 0
    while i < len(inner):
        c = inner[i]
        if c in SINGLE_QUOTES:
            if i + 1 < len(inner) and inner[i + 1] in SINGLE_QUOTES:
                out.append(inner[i + 1])
                i += 2
                continue
            return None, i + 1
        out.append(c)
        i += 1
    return "".join(out), None


def expandable_quote_error(node, source):
    """Offset (in characters of the node's own text) of a Unicode double quote that PowerShell would take
    as the end of this "..." string, or None. Text of nested $(...) and variables is skipped."""
    nested = [(c.start_byte, c.end_byte) for c in node.named_children]
    own = bytearray(source[node.start_byte : node.end_byte])
    for start, end in nested:
        for b in range(start - node.start_byte, end - node.start_byte):
            own[b] = ord(" ")
    text = own.decode("utf-8", "replace")[1:-1]
    i = 0
    while i < len(text):
        c = text[i]
        if c == "`":
            i += 2
            continue
        if c in DOUBLE_QUOTES:
            if i + 1 < len(text) and text[i + 1] in DOUBLE_QUOTES:
                i += 2
                continue
            return i + 1
        i += 1
    return None


def problems(tree, source):
    found = []
    for node in walk(tree.root_node):
        if node.is_missing:
            found.append(f"{position(node)}: missing {node.type}")
        elif node.type == "ERROR":
            found.append(
                f"{position(node)}: syntax error near: {snippet(source, node.start_byte, node.end_byte)}"
            )
        elif node.type == "verbatim_string_characters":
            text = node.text.decode("utf-8", "replace")
            _, bad = decode_verbatim(text)
            if bad is not None:
                found.append(
                    f"{position(node)}: PowerShell ends this single-quoted string early, at character "
                    f"{bad + 1} ({text[bad]!r}, an undoubled quote): {snippet(source, node.start_byte, node.end_byte)}"
                )
        elif node.type == "verbatim_here_string_characters":
            lines = node.text.decode("utf-8", "replace").split("\n")
            for k, line in enumerate(lines[1:-1], start=1):
                if len(line) >= 2 and line[0] in SINGLE_QUOTES and line[1] == "@":
                    found.append(
                        f"{node.start_point[0] + k + 1}:1: PowerShell ends this here-string early, at a line "
                        f"starting with {line[:2]!r}"
                    )
        elif node.type == "expandable_string_literal":
            bad = expandable_quote_error(node, source)
            if bad is not None:
                found.append(
                    f"{position(node)}: PowerShell ends this double-quoted string early, at character {bad + 1} "
                    f"(an undoubled Unicode double quote): {snippet(source, node.start_byte, node.end_byte)}"
                )
    return found


def single_chain_end(node, stop):
    """Follows nodes with exactly one named child down to a node of type `stop`; None if the chain
    branches or ends elsewhere."""
    while node is not None and node.type != stop:
        children = node.named_children
        if len(children) != 1:
            return None
        node = children[0]
    return node


def assignments(tree):
    out = []
    root = tree.root_node
    lists = [c for c in root.named_children if c.type == "statement_list"]
    for statement_list in lists:
        for statement in statement_list.named_children:
            if statement.type != "pipeline" or len(statement.named_children) != 1:
                continue
            assignment = statement.named_children[0]
            if assignment.type != "assignment_expression":
                continue
            left = assignment.child_by_field_name("left") or assignment.named_children[0]
            variable = single_chain_end(left, "variable")
            operator = next((c for c in assignment.named_children if c.type == "assignement_operator"), None)
            value_node = assignment.child_by_field_name("value")
            literal = single_chain_end(value_node, "string_literal") if value_node is not None else None
            value = None
            if literal is not None and len(literal.named_children) == 1:
                chars = literal.named_children[0]
                if chars.type == "verbatim_string_characters":
                    value, bad = decode_verbatim(chars.text.decode("utf-8"))
                    if bad is not None:
                        value = None
            out.append(
                {
                    "line": assignment.start_point[0] + 1,
                    "variable": variable.text.decode("utf-8").lstrip("$") if variable is not None else None,
                    "operator": operator.text.decode("utf-8") if operator is not None else None,
                    "literal": value is not None,
                    "value": value,
                }
            )
    return out


def main(argv):
    args = argv[1:]
    want_assignments = "--assignments" in args
    args = [a for a in args if a != "--assignments"]
    if any(a.startswith("--") for a in args) or len(args) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    parser = load_parser()
    if not args or args[0] == "-":
        source = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        name = args[0]
        with open(name, "rb") as f:
            source = f.read()
    if source.startswith(b"\xef\xbb\xbf"):
        source = source[3:]
    tree = parser.parse(source)
    found = problems(tree, source)
    for line in found:
        print(f"{name}:{line}")
    if found:
        print(f"check-powershell: {len(found)} problem(s) in {name}", file=sys.stderr)
    if want_assignments:
        print(json.dumps({"assignments": assignments(tree)}, ensure_ascii=True))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
