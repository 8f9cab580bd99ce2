"""Selectors: name predicates, norm layers of any library, declared exemptions, and the
HF / timm presets.

The presets are checked against the real packages (transformers, timm) on small models
built from configs, nothing from a hub; those tests skip where the package is absent.
"""

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab.rules import resolve


class LlamaRMSNorm(nn.Module):  # the shape of transformers' class, written here
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class Normalize(nn.Module):  # a preprocessing step, not a norm layer
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Parameter(torch.ones(d, d))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_norm = LlamaRMSNorm(8)
        self.fc = nn.Linear(8, 8)
        self.pre = Normalize(8)


class ViTish(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.rel_pos_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.block = Block()

    def no_weight_decay(self):
        return {"cls_token", "pos_*"}

    def no_weight_decay_keywords(self):
        return {"bias_table"}


def _names(model, selector):
    return set(resolve(model, [dl.Rule(dl.L2(1e-2), params=selector)])[0][0].names)


def test_norm_classes_of_other_libraries_are_norm_layers():
    block = Block()
    assert dl.is_norm(block.attn_norm) and not dl.is_norm(block.pre) and not dl.is_norm(block.fc)
    # the README recipe works on a Llama-style model (it raised "matches no parameter")
    assert _names(block, ["*.bias", dl.norm_layers]) == {"attn_norm.weight", "fc.bias"}


def test_default_selection_honours_no_weight_decay_and_its_keywords():
    model = nn.Sequential(ViTish())
    assert _names(model, None) == {"0.block.fc.weight", "0.block.pre.proj"}


def test_an_explicit_rule_still_decays_what_the_model_declares_exempt():
    assert _names(ViTish(), "pos_embed") == {"pos_embed"}


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'keras'.*'hf', 'timm'"):
        dl.preset("keras")


def test_presets_on_a_model_without_a_library():
    model = ViTish()
    # HF: everything without bias/norm in its name, embeddings-like tokens included
    assert _names(model, dl.preset("hf")) == {"cls_token", "pos_embed", "block.fc.weight", "block.pre.proj"}
    # timm: >= 2-D, not .bias, not in no_weight_decay() (keywords are not timm's)
    assert _names(model, dl.preset("timm")) == {"rel_pos_bias_table", "block.fc.weight", "block.pre.proj"}


def _same_params(model, ours: set, theirs) -> None:
    by_name = dict(model.named_parameters(remove_duplicate=False))
    assert {id(by_name[n]) for n in ours} == {id(by_name[n]) for n in theirs}


def _hf_models():
    tf = pytest.importorskip("transformers")
    small = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=2, intermediate_size=32,
                 vocab_size=50, max_position_embeddings=32)
    return {
        "bert": tf.BertForSequenceClassification(tf.BertConfig(**small)),
        "gpt2": tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=16, n_head=2, n_layer=2, vocab_size=50, n_positions=32)),
        "llama": tf.LlamaForCausalLM(tf.LlamaConfig(**small, num_key_value_heads=2)),
    }


@pytest.mark.extras
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_hf_preset_is_what_the_trainer_decays(arch):
    tf = pytest.importorskip("transformers")
    model = _hf_models()[arch]
    theirs = tf.Trainer.get_decay_parameter_names(None, model)
    _same_params(model, _names(model, dl.preset("hf")), theirs)
    # HF decays the embedding tables, the default does not (a tied LM head is decayed by both)
    head = model.get_output_embeddings()
    tied = {id(head.weight)} if head is not None else set()
    emb = {f"{n}.weight" for n, m in model.named_modules()
           if isinstance(m, nn.Embedding) and id(m.weight) not in tied}
    assert emb and emb <= set(theirs) and not emb & _names(model, None)


@pytest.mark.extras
def test_norm_layers_covers_llamas_rmsnorm():
    model = _hf_models()["llama"]
    normed = _names(model, dl.norm_layers)
    assert normed and all("norm" in n for n in normed)
    assert {n for n, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"} == {
        n.rsplit(".", 1)[0] for n in normed}


def _timm_models():
    timm = pytest.importorskip("timm", reason="timm (and the torchvision it imports) is not installed")
    import timm.optim  # noqa: F401  (a submodule timm does not import itself)
    return timm, {
        "vit": timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                                 num_classes=3),
        "resnet": timm.create_model("resnet18", pretrained=False, num_classes=3),
    }


@pytest.mark.extras
@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_timm_preset_is_what_create_optimizer_decays(arch):
    timm, models = _timm_models()
    model = models[arch]
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    by_id = {id(p): n for n, p in model.named_parameters()}
    _same_params(model, _names(model, dl.preset("timm")), {by_id[i] for i in decayed})
    if arch == "vit":  # the default honours the model's no_weight_decay() as timm does
        assert not {"cls_token", "pos_embed"} & _names(model, None)


def test_name_predicates_on_top_level_and_nested_names():
    lin, conv = nn.Linear(2, 2), nn.Conv2d(1, 1, 1)
    assert dl.biases("bias", lin.bias, lin) and dl.biases("a.b.bias", lin.bias, lin)
    assert not dl.biases("weight", lin.weight, lin) and not dl.biases("a.bias.weight", lin.weight, lin)
    sel = dl.weights(nn.Linear, nn.Bilinear)  # built here, not at collection time
    assert sel.__name__ == "weights(Linear, Bilinear)"
    assert sel("weight", lin.weight, lin) and sel("a.b.weight", lin.weight, lin)
    assert not sel("bias", lin.bias, lin) and not sel("a.weight.bias", lin.bias, lin)
    assert not sel("weight", conv.weight, conv)
    opt = dl.regularize(torch.optim.SGD(lin.parameters(), lr=0.1), lin,
                        [dl.Rule(dl.L2(0.1), params=dl.biases), dl.Rule(dl.L1(0.1), params=dl.weights(nn.Linear))])
    assert [b.names for b in opt.bindings] == [["bias"], ["weight"]]
