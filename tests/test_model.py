import math

import pytest
import torch

from gpt2.hf_weights import load_hf_state_dict, load_pretrained
from gpt2.model import GPT, GPTConfig

HF_VOCAB = 100  # not a multiple of 64, so the padded rows are exercised
HF_BLOCK = 16


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=HF_VOCAB,
        n_positions=HF_BLOCK,
        n_embd=32,
        n_layer=2,
        n_head=2,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        attn_implementation="eager",
    )
    model = transformers.GPT2LMHeadModel(config)
    assert model.config._attn_implementation == "eager"
    # HF initialises biases and LayerNorms to constants; randomise everything
    # so a mis-mapped or untransposed tensor cannot go unnoticed.
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def tiny_config(**overrides):
    values = dict(block_size=8, vocab_size=50, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    values.update(overrides)
    return GPTConfig(**values)


def ours_from_hf(hf):
    config = GPTConfig(
        block_size=HF_BLOCK, vocab_size=HF_VOCAB, n_layer=2, n_head=2, n_embd=32, dropout=0.0
    )
    model = GPT(config)
    load_hf_state_dict(model, hf.state_dict())
    return model.eval()


def batch(vocab, block, seed=1, size=3):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (size, block), generator=gen)
    targets = torch.randint(0, vocab, (size, block), generator=gen)
    return idx, targets


def test_hf_parity_logits_and_loss(hf_model):
    ours = ours_from_hf(hf_model)
    idx, targets = batch(HF_VOCAB, HF_BLOCK)
    with torch.no_grad():
        hf_out = hf_model(idx)
        logits, loss = ours(idx, targets)
    assert logits.shape == hf_out.logits.shape
    assert (logits - hf_out.logits).abs().max().item() < 1e-5
    # HF's `labels` shift internally; compare against the same next-token loss.
    hf_loss = torch.nn.functional.cross_entropy(hf_out.logits.reshape(-1, HF_VOCAB), targets.reshape(-1))
    assert abs(loss.item() - hf_loss.item()) < 1e-5


def test_hf_parity_shifted_labels_loss(hf_model):
    ours = ours_from_hf(hf_model)
    idx, _ = batch(HF_VOCAB, HF_BLOCK, seed=2)
    with torch.no_grad():
        hf_loss = hf_model(idx, labels=idx).loss
        _, loss = ours(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - hf_loss.item()) < 1e-5


def test_inference_returns_last_position_only(hf_model):
    ours = ours_from_hf(hf_model)
    idx, _ = batch(HF_VOCAB, 10)
    with torch.no_grad():
        full, _ = ours(idx, torch.zeros_like(idx))
        last, loss = ours(idx)
    assert loss is None
    assert last.shape == (3, 1, HF_VOCAB)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-6)


def test_load_hf_state_dict_without_prefix(hf_model):
    stripped = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    ours = GPT(ours_from_hf(hf_model).config)
    load_hf_state_dict(ours, stripped)
    idx, _ = batch(HF_VOCAB, HF_BLOCK)
    with torch.no_grad():
        diff = (ours.eval()(idx, idx)[0] - hf_model(idx).logits).abs().max().item()
    assert diff < 1e-5


def test_load_hf_state_dict_reports_bad_keys_and_shapes(hf_model):
    state = dict(hf_model.state_dict())
    model = ours_from_hf(hf_model)

    missing = {k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_fc.weight"}
    with pytest.raises(ValueError, match=r"missing keys \['transformer.h.1.mlp.c_fc.weight'\]"):
        load_hf_state_dict(model, missing)

    extra = dict(state, **{"transformer.h.0.attn.q_attn.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['transformer.h.0.attn.q_attn.weight'\]"):
        load_hf_state_dict(model, extra)

    wrong_shape = dict(state, **{"transformer.wpe.weight": torch.zeros(HF_BLOCK + 1, 32)})
    with pytest.raises(ValueError, match=r"transformer.wpe.weight: checkpoint \(17, 32\)"):
        load_hf_state_dict(model, wrong_shape)


def test_untied_lm_head_loads_into_untied_model_only(hf_model):
    state = dict(hf_model.state_dict())
    state["lm_head.weight"] = torch.randn(HF_VOCAB, 32)
    with pytest.raises(ValueError, match="tie_weights=False"):
        load_hf_state_dict(ours_from_hf(hf_model), state)

    untied = GPT(GPTConfig(block_size=HF_BLOCK, vocab_size=HF_VOCAB, n_layer=2, n_head=2, n_embd=32,
                           tie_weights=False))
    load_hf_state_dict(untied, state)
    assert torch.equal(untied.lm_head.weight[:HF_VOCAB], state["lm_head.weight"])
    assert torch.equal(untied.transformer.wte.weight[:HF_VOCAB], state["transformer.wte.weight"])


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_load_pretrained_round_trip(hf_model, tmp_path, weights_file):
    if weights_file == "model.safetensors":
        hf_model.save_pretrained(tmp_path, safe_serialization=True)
    else:
        hf_model.config.to_json_file(tmp_path / "config.json")
        torch.save(hf_model.state_dict(), tmp_path / weights_file)
    assert (tmp_path / weights_file).is_file()
    ours = load_pretrained(tmp_path).eval()
    assert ours.config.vocab_size == HF_VOCAB and ours.config.block_size == HF_BLOCK
    idx, _ = batch(HF_VOCAB, HF_BLOCK, seed=3)
    with torch.no_grad():
        diff = (ours(idx, idx)[0] - hf_model(idx).logits).abs().max().item()
    assert diff < 1e-5


def test_load_pretrained_missing_weights_is_clear(hf_model, tmp_path):
    hf_model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors") as err:
        load_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path / "nowhere")


def test_weight_tying_shares_storage():
    tied = GPT(tiny_config())
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert tied.lm_head.weight.data_ptr() == tied.transformer.wte.weight.data_ptr()
    untied = GPT(tiny_config(tie_weights=False))
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()
    embedding_rows = untied.transformer.wte.weight.numel()
    assert untied.num_params(non_embedding=False) - tied.num_params(non_embedding=False) == embedding_rows
    position_rows = tied.transformer.wpe.weight.numel()
    assert tied.num_params(non_embedding=False) - tied.num_params() == position_rows


def test_vocab_padding():
    model = GPT(tiny_config(vocab_size=50))
    assert model.transformer.wte.weight.shape[0] == 64
    assert model.lm_head.weight.shape[0] == 64
    assert GPTConfig(vocab_size=50257).padded_vocab_size == 50304
    assert GPTConfig(vocab_size=128).padded_vocab_size == 128

    # Make a padding row dominate: it must still never reach the logits.
    with torch.no_grad():
        model.lm_head.weight[60].fill_(100.0)
    idx, targets = batch(50, 8)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 8, 50)
    assert model(idx)[0].shape == (3, 1, 50)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1))
    assert torch.allclose(loss, expected)
    assert model.generate(idx[:, :2], 6, temperature=1.0).max().item() < 50


def test_loss_ignores_minus_one():
    model = GPT(tiny_config())
    idx, targets = batch(50, 8)
    masked = targets.clone()
    masked[:, 4:] = -1
    logits, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 50), targets[:, :4].reshape(-1))
    assert torch.allclose(loss, expected)


def test_sequence_longer_than_block_size_is_rejected():
    model = GPT(tiny_config(block_size=8))
    with pytest.raises(AssertionError, match="block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def greedy_reference(model, idx, steps):
    for _ in range(steps):
        logits, _ = model(idx[:, -model.config.block_size :])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


@pytest.mark.parametrize("sampling", [
    dict(temperature=1.5, top_k=1, seed=123),   # top-k 1 keeps only the argmax
    dict(temperature=0.0, seed=None),           # temperature 0 is greedy
    dict(temperature=2.0, top_p=1e-6, seed=7),  # a tiny nucleus keeps only the argmax
])
def test_degenerate_sampling_is_greedy(sampling):
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    prompt = torch.randint(0, 50, (2, 3))
    expected = greedy_reference(model, prompt, 5)
    seed = sampling.pop("seed")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    assert torch.equal(model.generate(prompt, 5, generator=gen, **sampling), expected)


def test_top_p_keeps_nucleus():
    from gpt2.model import _keep_top_p

    logits = torch.log(torch.tensor([[0.05, 0.5, 0.3, 0.15]]))
    kept = torch.isfinite(_keep_top_p(logits, 0.75))
    assert kept.tolist() == [[False, True, True, False]]
    kept = torch.isfinite(_keep_top_p(logits, 0.81))
    assert kept.tolist() == [[False, True, True, True]]


def test_sampling_is_reproducible_with_generator_and_varies_without_filters():
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    prompt = torch.zeros(4, 1, dtype=torch.long)
    first = model.generate(prompt, 7, generator=torch.Generator().manual_seed(5))
    second = model.generate(prompt, 7, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    # Small-init logits are nearly uniform over 50 tokens: sampling must not be greedy.
    assert not torch.equal(first, greedy_reference(model, prompt, 7))


def test_generate_beyond_block_size_crops_context():
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=8)).eval()
    prompt = torch.randint(0, 50, (1, 6))
    out = model.generate(prompt, 12, temperature=0.0)
    assert out.shape == (1, 18)
    assert torch.equal(out[:, :6], prompt)
    assert torch.equal(out, greedy_reference(model, prompt, 12))


def test_generate_in_train_mode():
    model = GPT(tiny_config(dropout=0.0)).train()
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 10, top_k=5)
    assert out.shape == (1, 11)
    assert model.training


def test_gpt2_init():
    n_layer = 4
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=n_layer, n_head=4, n_embd=256))
    expected_proj = 0.02 / math.sqrt(2 * n_layer)
    for block in model.transformer.h:
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            assert abs(proj.weight.std().item() - expected_proj) < 0.1 * expected_proj
            assert torch.count_nonzero(proj.bias) == 0
        assert abs(block.mlp.c_fc.weight.std().item() - 0.02) < 0.002
        assert torch.count_nonzero(block.attn.c_attn.bias) == 0


def test_no_bias_config():
    model = GPT(tiny_config(bias=False))
    assert all(not name.endswith("bias") for name, _ in model.named_parameters())


def test_build_model_starts_from_a_saved_hugging_face_model(hf_model, tiny_config, tmp_path):
    from gpt2.build import build_model
    from lib import config as cfglib

    hf_dir = tmp_path / "hf-gpt2"
    hf_model.save_pretrained(hf_dir, safe_serialization=True)
    shape = ["N_LAYER=2", "N_HEAD=2", "N_EMBD=32", "BLOCK_SIZE=16", "DROPOUT=0", "BIAS=y",
             f"INIT_FROM_DIR={hf_dir}"]
    cfg = cfglib.load(tiny_config(*shape, "PRUNING=magnitude", "PRUNING_START=1"))
    model = build_model(cfg, HF_VOCAB).eval()
    idx = torch.randint(0, HF_VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf_model.eval()(idx).logits
        logits, _ = model(idx, idx)  # with targets: logits at every position
    assert torch.allclose(logits, expected, atol=1e-4)
    assert model.transformer.h[0].mlp.c_fc.weight_mask.all()  # masks attached, nothing pruned
    for wrong, symbol in (("BIAS=n", "CONFIG_BIAS is n"), ("WEIGHT_TYING=n", "WEIGHT_TYING is n")):
        cfg = cfglib.load(tiny_config(*shape, wrong, name=f"wrong-{symbol[:10]}"))
        with pytest.raises(cfglib.ConfigError, match=symbol):
            build_model(cfg, HF_VOCAB)


# --- architecture knobs -----------------------------------------------------

def knob_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides))


def test_rmsnorm_matches_its_formula():
    model = knob_model(norm="rmsnorm")
    norm = model.transformer.h[0].ln_1
    assert not isinstance(norm, torch.nn.LayerNorm)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 16)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_rope_attention_scores_depend_only_on_relative_position():
    from gpt2.model import RotaryEmbedding
    rope = RotaryEmbedding(head_dim=8, block_size=32, base=10000.0)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=gen), torch.randn(8, generator=gen)

    def score(i, j):
        qs = rope(q.expand(1, 1, 32, 8))[0, 0, i]
        ks = rope(k.expand(1, 1, 32, 8))[0, 0, j]
        return (qs @ ks).item()
    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(20, 20) == pytest.approx(score(0, 0), abs=1e-5)
    assert abs(score(5, 2) - score(5, 4)) > 1e-3  # but the distance matters
    # position 0 is not rotated; position 1 rotates pair (0, 4) by angle 1 (frequency base^0)
    x = torch.randn(1, 1, 2, 8, generator=gen)
    out = rope(x)
    assert torch.allclose(out[0, 0, 0], x[0, 0, 0])
    c, s = math.cos(1.0), math.sin(1.0)
    assert out[0, 0, 1, 0].item() == pytest.approx((x[0, 0, 1, 0] * c - x[0, 0, 1, 4] * s).item(), abs=1e-6)
    assert out[0, 0, 1, 4].item() == pytest.approx((x[0, 0, 1, 0] * s + x[0, 0, 1, 4] * c).item(), abs=1e-6)


def test_rope_model_has_no_position_embedding_and_is_position_aware():
    model = knob_model(positions="rope").eval()
    assert "wpe" not in model.transformer and "transformer.wpe.weight" not in model.state_dict()
    idx, targets = batch(50, 8)
    logits, loss = model(idx, targets)
    assert torch.isfinite(loss)
    # without positions, causal attention could not tell the order of the prefix apart
    forward, swapped = torch.tensor([[3, 7, 9]]), torch.tensor([[7, 3, 9]])
    assert not torch.allclose(model(forward)[0], model(swapped)[0])


@pytest.mark.parametrize("mlp, activation", [
    ("swiglu", torch.nn.functional.silu),
    ("geglu", lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
])
def test_gated_mlp_shapes_and_values(mlp, activation):
    model = knob_model(n_embd=48, n_head=2, mlp=mlp)
    block_mlp = model.transformer.h[0].mlp
    hidden = 128  # 2/3 * 4 * 48 = 128, already a multiple of 64
    assert block_mlp.c_fc.weight.shape == (2 * hidden, 48)
    assert block_mlp.c_proj.weight.shape == (48, hidden)
    x = torch.randn(2, 3, 48)
    w_gate, w_up = block_mlp.c_fc.weight[:hidden], block_mlp.c_fc.weight[hidden:]
    b_gate, b_up = block_mlp.c_fc.bias[:hidden], block_mlp.c_fc.bias[hidden:]
    expected = block_mlp.c_proj(activation(x @ w_gate.T + b_gate) * (x @ w_up.T + b_up))
    assert torch.allclose(block_mlp(x), expected, atol=1e-6)
    # rounding up to the multiple, and the rule off
    assert GPTConfig(n_embd=40, n_head=2, mlp=mlp).mlp_hidden == 128  # 106.7 -> 128
    assert GPTConfig(n_embd=40, n_head=2, mlp=mlp, gated_hidden_multiple=8).mlp_hidden == 112
    assert GPTConfig(n_embd=40, n_head=2, mlp=mlp, gated_match_params=False).mlp_hidden == 160


def test_relu2_and_bio_activations():
    relu2 = knob_model(mlp="relu2").transformer.h[0].mlp
    x = torch.randn(4, 16)
    assert torch.allclose(relu2.hidden(x), torch.relu(relu2.c_fc(x)) ** 2)
    bio = knob_model(mlp="bio").transformer.h[0].mlp
    with torch.no_grad():
        bio.bio_w.uniform_(0.5, 2)
        bio.bio_phi.uniform_(-1, 1)
    h = bio.c_fc(x)
    assert torch.allclose(bio.hidden(x), torch.sin(bio.bio_w * h + bio.bio_phi) * torch.tanh(h))
    assert bio.bio_w.requires_grad and bio.bio_phi.requires_grad


def test_separate_qkv_equals_fused_with_the_same_weights():
    fused = knob_model().eval()
    separate = knob_model(fused_qkv=False).eval()
    state = fused.state_dict()
    moved = {}
    for key, value in state.items():
        if ".attn.c_attn." in key:
            for name, part in zip(("c_q", "c_k", "c_v"), value.split(16, dim=0)):
                moved[key.replace("c_attn", name)] = part
        else:
            moved[key] = value
    separate.load_state_dict(moved)
    idx, targets = batch(50, 8)
    assert torch.allclose(fused(idx, targets)[0], separate(idx, targets)[0], atol=1e-6)
    # pruning sees the three projections as Linear layers inside the blocks
    from lib.prune import prunable
    names = [n for n, _, _ in prunable(separate, "blocks")]
    assert "transformer.h.0.attn.c_q.weight" in names and "transformer.h.0.attn.c_v.weight" in names


def test_qk_norm_normalises_queries_and_keys():
    model = knob_model(qk_norm=True, norm="rmsnorm")
    attn = model.transformer.h[0].attn
    seen = {}
    attn.q_norm.register_forward_hook(lambda m, i, o: seen.update(q=(i[0], o)) or None)
    model(*batch(50, 8))
    q, normed = seen["q"]
    assert q.shape[-1] == 8  # per head
    expected = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(normed, expected, atol=1e-6)


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for recompute in (False, True):
        model = knob_model(checkpoint_blocks=recompute, dropout=0.1)
        torch.manual_seed(5)  # the same dropout masks
        model(*batch(50, 8))[1].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_unknown_architecture_names_are_rejected():
    with pytest.raises(ValueError, match="norm 'batchnorm'"):
        tiny_config(norm="batchnorm")
    with pytest.raises(ValueError, match="even head size"):
        tiny_config(n_embd=18, n_head=2, positions="rope")
    with pytest.raises(ValueError, match="needs mlp 'bio'"):
        tiny_config(bio_sparsity_penalty=0.1)
