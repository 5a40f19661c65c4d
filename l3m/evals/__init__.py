"""Standard evaluation protocols of the seed papers, run on a trained l3m model (`l3m eval --suite`).

One module per suite (`clip`: zero-shot classification and image-text retrieval; `probe`: AIM's
frozen-trunk attentive and linear probes; `perplexity`; `lm_harness`: EleutherAI's lm-eval),
`registry` naming them, `model` loading a run's weights and running parts of its model, `report`
writing the results to the console, `--json` and the run's logs.
"""
