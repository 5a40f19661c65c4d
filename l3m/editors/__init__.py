"""Editor and documentation support for `.l3m` files (syntax highlighting); nothing here is imported by l3m."""
