"""`videorope-train make-base`: a Qwen2-VL vision tower joined to a Qwen2 language model (the papers' start).

Tiny models: a random Qwen2-VL (or Qwen2.5-VL) and a random Qwen2 causal LM with another depth, other weights and
the same tokenizer. Expectations are independent of make-base's code: every weight compared with its source file,
and — since VideoRoPE on text alone is plain 1D RoPE — the joined, prepared model's text logits must equal the
donor Qwen2ForCausalLM's own.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # end-to-end launches: not in `make test-fast`

BIN = Path(sys.executable).parent


def make_donor(out, hidden_size=64, layers=3, heads=4, kv_heads=2, seed=7, tie=False):
    """A random Qwen2 causal LM with the tiny Qwen2-VL's tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from videorope_train.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=96,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                         tie_word_embeddings=tie, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)


def weights(directory):
    out = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_joined_model_has_the_donors_language_and_the_vl_vision(tmp_path, family):
    from transformers import AutoModelForImageTextToText, Qwen2ForCausalLM

    from videorope_train.hook.prepare import prepare_model
    from videorope_train.rope import RopeConfig
    from videorope_train.tiny import make_tiny_model

    vl = make_tiny_model(tmp_path / "vl", family=family)
    donor = make_donor(tmp_path / "donor")
    out = tmp_path / "joined"
    result = subprocess.run([str(BIN / "videorope-train"), "make-base", "--vision", str(vl), "--language", str(donor),
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    joined, vision_src, language_src = weights(out), weights(vl), weights(donor)
    vision = {k: v for k, v in vision_src.items() if k.startswith("visual.")}
    assert vision and set(joined) == set(vision) | set(language_src)
    for key, tensor in vision.items():
        assert torch.equal(joined[key], tensor), key
    for key, tensor in language_src.items():
        assert torch.equal(joined[key], tensor), key
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family and config["text_config"]["num_hidden_layers"] == 3  # the donor's depth
    assert config["text_config"]["intermediate_size"] == 96
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]  # kept for M-RoPE layouts
    assert (out / "tokenizer.json").read_bytes() == (vl / "tokenizer.json").read_bytes()  # with the vision tokens

    hooked = prepare_model(out, tmp_path / "hooked", RopeConfig("videorope"))
    model = AutoModelForImageTextToText.from_pretrained(hooked, trust_remote_code=True).eval()
    reference = Qwen2ForCausalLM.from_pretrained(donor).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2, 50, 51]])
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, reference(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_tied_donor_and_bad_pairs_are_handled(tmp_path):
    from videorope_train.base import make_base
    from videorope_train.tiny import make_tiny_model

    vl = make_tiny_model(tmp_path / "vl")
    tied = make_donor(tmp_path / "tied", tie=True)
    out = make_base(vl, tied, tmp_path / "joined-tied")
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "lm_head.weight" not in weights(out)

    wide = make_donor(tmp_path / "wide", hidden_size=96, heads=6, kv_heads=2)
    with pytest.raises(ValueError, match=r"merger outputs 64 features but the language model's hidden_size is 96"):
        make_base(vl, wide, tmp_path / "no")
    assert not (tmp_path / "no").exists()  # nothing written for a pair that does not fit
    with pytest.raises(ValueError, match="model_type 'qwen2_vl'; expected .* or a Qwen2-family causal LM|must be a "
                                         "Qwen2-family causal LM"):
        make_base(vl, vl, tmp_path / "no")
    with pytest.raises(FileExistsError, match="not empty"):
        make_base(vl, tied, out)


def test_stock_class_on_a_hooked_checkpoint_is_the_documented_failure(hooked_dir, tmp_path):
    """README, "Loading a checkpoint": the stock class cannot read a hooked checkpoint (its key conversion is keyed by
    model_type, and it would apply M-RoPE anyway): every language weight is reported MISSING and left random. The
    right call — the checkpoint's own remote code — gives back the saved model exactly."""
    from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration

    trained = AutoModelForImageTextToText.from_pretrained(hooked_dir("videorope"), trust_remote_code=True).eval()
    with torch.no_grad():
        for parameter in trained.parameters():  # "training": weights no base model has
            parameter.add_(0.01 * torch.randn_like(parameter))
    trained.save_pretrained(tmp_path / "checkpoint")
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    stock, info = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "checkpoint", output_loading_info=True)
    assert any(key.startswith("model.language_model.layers.0.") for key in info["missing_keys"]), info
    right = AutoModelForImageTextToText.from_pretrained(tmp_path / "checkpoint", trust_remote_code=True).eval()
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        assert torch.equal(right(input_ids=ids).logits, want)
        assert not torch.allclose(stock.eval()(input_ids=ids).logits, want, atol=1e-3)
