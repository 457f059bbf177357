//! Agent install scripts for SSM Run Command: rendering with per-shell quoting, and parsing their result.
