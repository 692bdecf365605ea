//! The user store (redb). Placeholder: the store helper fills this in.
