"""Small sample upstream servers used by the demo and the end-to-end tests."""
