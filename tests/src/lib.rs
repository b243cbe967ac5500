//! Nothing here: the black-box tests are in `tests/it/`, one integration binary.
