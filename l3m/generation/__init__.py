"""Text generation from trained decoders: `l3m generate` and `l3m.generate(...)`.

(The package is `generation`, not `generate`: importing a subpackage `l3m.generate` would replace
the function `l3m.generate` on the `l3m` module.)

- `cache`: the key/value cache and the positions of left-padded prompts;
- `hooks`: fitting a built model with the cache while it generates;
- `decoder`: which blocks of a model generate, and whether the cache can serve them;
- `sampling`: greedy and nucleus sampling;
- `decode`: the decode loops (cached, and full recomputation);
- `loading`: a run's weights, program and tokenizer;
- `api` and `cli`: the Python function and the command.
"""
