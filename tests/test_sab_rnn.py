"""SABLSTM and SABGRU as drop-ins (issue 18): stacked layers, dropout, variable lengths (padded and packed), the
GRU cell and the bounded memory, each held to the plain reference of tests/sab_rnn_reference.py in float64
(outputs, final state and every gradient) on both paths, plus their state contract and their errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sab_kernels.kernels import sab_lstm_fused
from sab_kernels.kernels.bounded_slots import SlotIndex
from sab_kernels.nn import SABGRU, SABLSTM, SABState, build_model
from sab_rnn_reference import reference_rnn

PATHS = ["step", pytest.param("fused", marks=pytest.mark.skipif(not sab_lstm_fused.available(), reason="needs the C++ extension"))]
CELLS = {"lstm": SABLSTM, "gru": SABGRU}
TOL = dict(atol=1e-10, rtol=1e-10)


def assert_close(a, b, tol=1e-10):
    """|a - b| <= tol relative to b's scale: SAB's h keeps the summaries added to it, so long runs reach values
    (and gradients) in the thousands, where elementwise float64 tolerances would measure only their size."""
    assert a.shape == b.shape, (a.shape, b.shape)
    err, scale = (a - b).abs().max().item(), 1 + b.abs().max().item()
    assert err <= tol * scale, f"max |a - b| = {err:.3g} > {tol:g} x {scale:.3g}"

# name -> module options; every one also runs with ragged lengths.
CONFIGS = {
    "one_layer": dict(),
    "three_layers": dict(num_layers=3),
    "bounded": dict(recent_slots=2, relevant_slots=2),
    "window": dict(recent_slots=3, relevant_slots=0),
    "bounded_layers_dense": dict(recent_slots=2, relevant_slots=1, num_layers=2, k_top=None),
    "bounded_k1_katt2": dict(recent_slots=1, relevant_slots=3, k_top=1, k_att=2, k_trunc=None),
}


def make(cell, path, seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(k_top=2, k_att=1, k_trunc=3, backend="cpu")  # the C++ kernels on both paths (the tests run
    # with TRITON_INTERPRET=1, where "auto" would pick the interpreted Triton kernels)
    opts.update(kw)
    return CELLS[cell](3, 4, path=path, **opts).double()


def h_of(state):
    return state if isinstance(state, torch.Tensor) else state[0]


def c_of(state):
    return None if isinstance(state, torch.Tensor) else state[1]


def grads(module, x, out, h_n, c_n, seed=1):
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + (h_n * torch.randn(h_n.shape, generator=g, dtype=out.dtype)).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.randn(c_n.shape, generator=g, dtype=out.dtype)).sum()
    params = [x] + list(module.parameters())
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_matches_reference(module, x, lengths=None, hx=None, tol=1e-10, **run):
    out, state = module(x, hx, lengths=lengths)
    h0 = c0 = None
    if hx is not None:
        h0, c0 = (hx[0], hx[1]) if isinstance(hx, tuple) else (hx, None)
    ref, h_ref, c_ref = reference_rnn(module, x, lengths, h0, c0, **run)
    assert_close(out, ref, tol)
    assert_close(h_of(state), h_ref, tol)
    if c_ref is not None:
        assert_close(c_of(state), c_ref, tol)
    for a, b in zip(grads(module, x, out, h_of(state), c_of(state)), grads(module, x, ref, h_ref, c_ref)):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            assert_close(a, b, tol)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("ragged", [False, True])
def test_every_option_equals_the_plain_reference(cell, config, ragged, path):
    module = make(cell, path, **CONFIGS[config])
    T, B = 11, 3
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([7, 11, 2]) if ragged else None
    assert_matches_reference(module, x, lengths)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
def test_given_initial_state_equals_the_reference(cell, path):
    module = make(cell, path, num_layers=2, recent_slots=2, relevant_slots=1)
    x = torch.randn(8, 2, 3, dtype=torch.float64, requires_grad=True)
    # Small: a GRU's h keeps every summary added to it, and large slots saturate the scoring tanh into exact
    # score ties, where the op's subgradient and autograd's through the reference may differ.
    h0 = 0.3 * torch.randn(2, 2, 4, dtype=torch.float64)
    hx = (h0, torch.randn(2, 2, 4, dtype=torch.float64)) if cell == "lstm" else h0
    assert_matches_reference(module, x, torch.tensor([8, 5]), hx)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
def test_long_sequence_with_a_bounded_memory_equals_the_reference(cell, path):
    """T far past W + M and k_top <= T: slots are kept, replaced and dropped many times."""
    module = make(cell, path, recent_slots=3, relevant_slots=2, k_top=2, k_trunc=7)
    x = torch.randn(120, 2, 3, dtype=torch.float64, requires_grad=True)
    # 120 steps of a recurrence whose state grows amplify the two sides' different rounding (the reference
    # stacks and projects every slot each step) to ~1e-9 relative.
    assert_matches_reference(module, x, tol=1e-8)


@pytest.mark.parametrize("path", PATHS)
def test_t_at_most_k_top_and_single_steps(path):
    for T in (1, 2, 3):
        module = make("gru", path, k_top=3, recent_slots=1, relevant_slots=1, num_layers=2)
        x = torch.randn(T, 2, 3, dtype=torch.float64, requires_grad=True)
        assert_matches_reference(module, x, torch.tensor([T, 1]))


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers_in_training_only(cell):
    module = make(cell, "step", num_layers=3, dropout=0.4)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    out, _ = module(x)
    ref, _, _ = reference_rnn(module, x, dropout_seed=5)
    torch.testing.assert_close(out, ref, **TOL)
    module.eval()
    out_eval, _ = module(x)
    module.dropout = 0.0
    plain, _ = module(x)
    torch.testing.assert_close(out_eval, plain, atol=0, rtol=0)
    assert not torch.equal(out, out_eval)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_input_gives_packed_output_as_nn_lstm_does(cell, path, batch_first):
    module = make(cell, path, num_layers=2, batch_first=batch_first, recent_slots=2, relevant_slots=1)
    lengths = torch.tensor([4, 9, 6])
    x = torch.randn(9, 3, 3, dtype=torch.float64, requires_grad=True)
    xin = x.transpose(0, 1) if batch_first else x
    packed = pack_padded_sequence(xin, lengths, batch_first=batch_first, enforce_sorted=False)
    out, state = module(packed)
    torch_rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(3, 4, num_layers=2, batch_first=batch_first).double()
    like, _ = torch_rnn(packed)
    assert torch.equal(out.batch_sizes, like.batch_sizes)
    assert torch.equal(out.sorted_indices, like.sorted_indices) and torch.equal(out.unsorted_indices, like.unsorted_indices)
    padded, out_lengths = pad_packed_sequence(out, batch_first=batch_first)
    assert torch.equal(out_lengths, lengths)
    expect, expect_state = module(xin, lengths=lengths)
    torch.testing.assert_close(padded, expect, atol=0, rtol=0)
    torch.testing.assert_close(h_of(state), h_of(expect_state), atol=0, rtol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config", ["three_layers", "bounded", "bounded_layers_dense"])
def test_chunks_equal_the_whole_sequence(cell, config, path):
    """Every layer's memory (and a bounded memory's slot index) carries over: two chunks equal one call,
    outputs and gradients, passing back the state itself or (GRU) h_n."""
    module = make(cell, path, **CONFIGS[config])
    x = torch.randn(13, 2, 3, dtype=torch.float64, requires_grad=True)
    out, state = module(x)
    whole = grads(module, x, out, h_of(state), c_of(state))
    a, state_a = module(x[:5])
    b, state_b = module(x[5:], state_a)
    out2 = torch.cat([a, b])
    torch.testing.assert_close(out2, out, **TOL)
    for g1, g2 in zip(grads(module, x, out2, h_of(state_b), c_of(state_b)), whole):
        if g2 is not None:
            torch.testing.assert_close(g1, g2, **TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_detached_state_continues_the_memory(cell):
    module = make(cell, "step", num_layers=2, recent_slots=2, relevant_slots=1)
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        whole, _ = module(x)
        _, state = module(x[:4])
        carried = state.detach() if cell == "lstm" else state.detach()
        rest, _ = module(x[4:], carried)
        fresh, _ = module(x[4:], (state[0].clone(), state[1].clone()) if cell == "lstm" else state.clone())
    torch.testing.assert_close(rest, whole[4:], atol=0, rtol=0)
    assert not torch.allclose(fresh, whole[4:])  # a tensor the module did not return starts a new memory


@pytest.mark.parametrize("cell", CELLS)
def test_a_ragged_state_cannot_continue(cell):
    module = make(cell, "step", num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    _, state = module(x, lengths=torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="ragged"):
        module(x, state)
    _, state = module(x, lengths=torch.tensor([5, 5]))  # every row ran all steps: an ordinary state
    module(x, state)


def test_one_row_runs_as_it_would_alone_and_writes_no_slot_past_its_length():
    module = make("lstm", "step", num_layers=2, recent_slots=2, relevant_slots=2)
    x = torch.randn(10, 3, 3, dtype=torch.float64)
    out, state = module(x, lengths=torch.tensor([10, 4, 7]))
    alone, alone_state = module(x[:4, 1:2])
    torch.testing.assert_close(out[:4, 1:2], alone, **TOL)
    assert out[4:, 1].abs().max() == 0
    torch.testing.assert_close(state[0][:, 1:2], alone_state[0], **TOL)
    torch.testing.assert_close(state[1][:, 1:2], alone_state[1], **TOL)
    assert alone_state.layers[0].memory.shape[1] == 5  # h0 and one slot per step: none past the length


def test_slot_index_rule_on_random_weights_with_ties():
    """SlotIndex (the per-step path's) against the reference's Python lists, with many exact ties: weights
    drawn from {0, 0.25, 0.5}."""
    W, M, B = 3, 2, 4
    g = torch.Generator().manual_seed(3)
    index = SlotIndex.new(B, 1, W, M, "cpu", torch.float64)
    lists = [dict(recent=[0], kept=[], rel={0: 0.0}) for _ in range(B)]
    for step in range(1, 60):
        k = min(2, index.count)
        idx = torch.stack([torch.randperm(index.count, generator=g)[:k] for _ in range(B)])
        w = torch.randint(0, 3, (B, k), generator=g).double() / 4
        index = index.add_relevance(w, idx)
        for b, L in enumerate(lists):
            active = L["kept"] + L["recent"]
            for a, i in zip(w[b].tolist(), idx[b].tolist()):
                if active[i] in L["recent"]:
                    L["rel"][active[i]] += a
        index = index.write(step)
        for L in lists:
            L["rel"][step] = 0.0
            L["recent"].append(step)
            if len(L["recent"]) > W:
                old = L["recent"].pop(0)
                if len(L["kept"]) < M:
                    L["kept"].append(old)
                else:
                    least = min(L["kept"], key=lambda j: (L["rel"][j], j))
                    if L["rel"][old] > L["rel"][least]:
                        L["kept"].remove(least)
                        L["kept"].append(old)
        for b, L in enumerate(lists):
            assert index.active[b, : index.count].tolist() == L["kept"] + L["recent"]
            assert index.kept == len(L["kept"])


def test_state_with_layers_and_index_saves_and_loads(tmp_path):
    module = make("lstm", "step", num_layers=2, recent_slots=2, relevant_slots=1)
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        whole, _ = module(x)
        _, state = module(x[:3])
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert isinstance(loaded, SABState) and len(loaded.layers) == 2 and loaded.layers[0].index.count == state.layers[0].index.count
    with torch.no_grad():
        rest, _ = module(x[3:], loaded)
    assert_close(rest, whole[3:], 1e-13)  # a loaded state recomputes its keys


def test_layers_are_single_layer_modules_and_old_state_dicts_load():
    module = SABLSTM(3, 4, num_layers=2)
    assert isinstance(module.layers, nn.ModuleList) and len(module.layers) == 2
    assert module.layers[1].input_size == 8 and module.layers[1].num_layers if hasattr(module.layers[1], "num_layers") else True
    one = SABLSTM(3, 4)
    assert one.weight_ih is one.layers[0].weight_ih and one.memory is one.layers[0].memory
    old = {k.replace("layers.0.", ""): v.clone() for k, v in one.state_dict().items()}  # the keys before layers
    fresh = SABLSTM(3, 4)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.weight_hh, one.weight_hh)
    gru = SABGRU(3, 4)
    assert gru.weight_ih.shape == (12, 3) and gru.weight_hh.shape == (12, 4) and gru.bias_hh.shape == (12,)


def test_gru_returns_h_n_as_nn_gru_does():
    module = SABGRU(3, 4, num_layers=2, batch_first=True)
    out, h_n = module(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, 8) and isinstance(h_n, torch.Tensor) and h_n.shape == (2, 2, 4)


@pytest.mark.parametrize("kind", ["sab", "sab-gru", "gru"])
def test_build_model_kinds_with_layers(kind):
    extra = {} if kind == "gru" else dict(recent_slots=4, relevant_slots=2)
    model = build_model(kind, 3, 8, 2, num_layers=2, dropout=0.1, **extra)
    logits = model(torch.randn(2, 6, 3))
    assert logits.shape == (2, 6, 2)
    logits.sum().backward()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(recent_slots=-1, relevant_slots=2), ValueError, "recent_slots"),
    (dict(recent_slots=2, relevant_slots=-1), ValueError, "relevant_slots"),
    (dict(recent_slots=2), ValueError, "relevant_slots"),
    (dict(relevant_slots=2), ValueError, "recent_slots"),
    (dict(recent_slots=2.0, relevant_slots=2), TypeError, "recent_slots"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(num_layers=0), ValueError, "num_layers"),
])
@pytest.mark.parametrize("cell", CELLS)
def test_bad_module_arguments_name_themselves(cell, kwargs, error, match):
    with pytest.raises(error, match=match):
        CELLS[cell](3, 4, **kwargs)


@pytest.mark.parametrize("lengths, error, match", [
    (torch.tensor([3, 0]), ValueError, r"lengths must lie in \[1, T\]"),
    (torch.tensor([3, 6]), ValueError, r"lengths must lie in \[1, T\]"),
    (torch.tensor([3]), ValueError, r"lengths must have shape \(B,\)"),
    (torch.tensor([3, 2], dtype=torch.int32), TypeError, "lengths must have dtype int64"),
    ([3, 2], TypeError, "lengths must be a"),
])
def test_bad_lengths_name_themselves(lengths, error, match):
    with pytest.raises(error, match=match):
        SABLSTM(3, 4)(torch.randn(5, 2, 3), lengths=lengths)


def test_bad_hx_for_the_layers_names_itself():
    module = SABLSTM(3, 4, num_layers=2, backend="cpu")
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"hx: h0 must have shape \(num_layers, B, H\) = \(2, 2, 4\)"):
        module(x, (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"hx: c0 must have shape"):
        module(x, (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match=r"hx: h0 must have shape \(num_layers, B, H\) = \(2, 3, 4\)"):
        module(pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 4, 2])), (torch.zeros(2, 2, 4),) * 2)
    with pytest.raises(TypeError, match="hx must be"):
        SABGRU(3, 4)(x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="lengths must be None when x is a PackedSequence"):
        module(pack_padded_sequence(x, torch.tensor([5, 4])), lengths=torch.tensor([5, 4]))


@pytest.mark.parametrize("cell", CELLS)
def test_a_torch_cell_in_sparse_attentive_rnn_equals_the_built_in_module(cell):
    """SparseAttentiveRNN(nn.LSTMCell / nn.GRUCell) with the built-in module's weights: the same function,
    outputs and gradients, ragged lengths and a bounded memory included."""
    from sab_kernels.nn import SparseAttentiveRNN

    builtin = make(cell, "step", recent_slots=2, relevant_slots=1)
    torch_cell = (nn.LSTMCell if cell == "lstm" else nn.GRUCell)(3, 4).double()
    generic = SparseAttentiveRNN(torch_cell, k_top=2, k_att=1, k_trunc=3, backend="cpu", recent_slots=2,
                                 relevant_slots=1).double()
    layer = builtin.layers[0]
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(torch_cell, name).copy_(getattr(layer, name))
        generic.memory.load_state_dict(layer.memory.state_dict())
    assert not generic.uses_fused_path(torch.zeros(1, 1, 3, dtype=torch.float64))
    x = torch.randn(9, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([9, 4, 6])
    a, sa = generic(x, lengths=lengths)
    b, sb = builtin(x, lengths=lengths)
    assert_close(a, b)
    ga = torch.autograd.grad((a * a).sum(), [x, torch_cell.weight_hh, generic.memory.score_weight])
    gb = torch.autograd.grad((b * b).sum(), [x, layer.weight_hh, layer.memory.score_weight])
    for u, v in zip(ga, gb):
        assert_close(u, v)


def test_sparse_attentive_rnn_takes_any_cell_with_the_rnn_cell_contract_and_checks_it():
    from sab_kernels.nn import SparseAttentiveRNN

    rnn = SparseAttentiveRNN(nn.RNNCell(3, 4), k_top=2, backend="cpu")
    out, h_n = rnn(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 8) and h_n.shape == (1, 2, 4)
    with pytest.raises(TypeError, match="cell must be an nn.Module"):
        SparseAttentiveRNN(lambda x, h: h)
    with pytest.raises(TypeError, match="int attribute input_size"):
        SparseAttentiveRNN(nn.Linear(3, 4))
