"""The scheduler: versioned keys, a stable order, cycles, and the graph networkx sees."""

from __future__ import annotations

import networkx as nx

HEAD = "l3m 1\n"
PROG = HEAD + """data { train: TextBytes(seq_len = 8, batch_size = 2) -> tokens, targets }
model gpt {
  preprocessor { embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x
                 mask: CausalMask() x -> mask }
  trunk        { t1: Transformer(dim = 16, depth = 1, heads = 2) (x = x, mask = mask) -> x
                 t2: Transformer(dim = 16, depth = 1, heads = 2) x -> x }
  head         { lm: LMHead(16, 256) x -> logits }
}
loss ce: LMCrossEntropy() logits, targets -> loss
"""


def test_overwrites_are_versions_not_cycles(compile_text):
    c = compile_text(PROG)
    assert c.ok
    flow = c.flow
    assert nx.is_directed_acyclic_graph(flow.graph)
    assert [w.version for w in flow.writes["x"]] == [0, 1, 2]
    # t2 reads the version t1 wrote; lm reads t2's
    assert flow.reads[("gpt.trunk.t2", 0)].node.name == "t1"
    assert flow.reads[("gpt.head.lm", 0)].node.name == "t2"


def test_order_is_topological_and_stable(compile_text):
    c = compile_text(PROG)
    assert c.flow.order == ["data.train", "gpt.preprocessor.embed", "gpt.preprocessor.mask", "gpt.trunk.t1",
                            "gpt.trunk.t2", "gpt.head.lm", "loss.ce"]
    assert c.flow.model_order()[0] == "gpt.preprocessor.embed"


def test_declaration_order_does_not_have_to_be_execution_order(compile_text):
    # The mask is declared after the trunk that reads it... but in an earlier stage it must be: here both in
    # the preprocessor, declared in reverse.
    src = PROG.replace("""embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x
                 mask: CausalMask() x -> mask""", """mask: CausalMask() tokens -> mask
                 embed: TokenEmbedding(vocab = 256, dim = 16) tokens -> x""")
    c = compile_text(src)
    assert c.ok
    order = c.flow.order
    assert order.index("gpt.preprocessor.mask") < order.index("gpt.trunk.t1")


def test_cycle_is_printed(compile_text):
    src = PROG.replace("mask: CausalMask() x -> mask", "mask: CausalMask() y -> mask\n  loop: Linear(16, 16) mask -> y")
    c = compile_text(src)
    (d,) = [d for d in c.errors if d.code == "E103"]
    assert "mask -> loop -> mask" in d.message or "loop -> mask -> loop" in d.message


def test_graph_holds_every_node_and_key(compile_text):
    g = compile_text(PROG).flow.graph
    assert {"data.train", "gpt.trunk.t1", "loss.ce"} <= set(g.nodes)
    assert g.has_edge(("key", "logits", 0), "loss.ce")
