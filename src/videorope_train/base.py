"""`make-base`: the papers' starting model, a Qwen2-VL vision tower joined to a Qwen2-family language model.

The authors train every RoPE variant from Qwen2-VL-7B-Instruct's vision tower (and merger) on the Qwen2-7B *base*
language model (released as ``Wiselnn/Qwen2-VL-7B-Instruct-with-Qwen2-Language-Backbone``): Qwen2-VL's own language
model already learned M-RoPE, which would favour M-RoPE in the comparison (VideoRoPE issues #2 and #8). This
writes that model: ``visual.*`` from the vision-language model, every language weight (``model.*``, ``lm_head.*``)
and the language architecture from the donor, the processor / tokenizer / chat template from the vision-language
model (its vision tokens), in the Hub layout that ``prepare-model`` reads.

Streaming: tensors are read one at a time from the sources' safetensors files and written in shards, so joining
7B models needs about one shard of memory, not the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SHARD_BYTES = 4 * 1024**3
# language-architecture fields taken from the donor (the weights are the donor's, so its shapes and settings rule)
TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "rms_norm_eps", "max_position_embeddings", "attention_dropout",
               "use_sliding_window", "sliding_window", "max_window_layers")
# what the vision-language model's processor directory brings (tokenizer with the vision tokens, chat template)
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
                   "video_preprocessor_config.json", "processor_config.json", "generation_config.json")
VISION_PREFIXES = ("visual.", "model.visual.")


def _config(directory: Path) -> dict:
    """The config as transformers reads it (old flat Qwen2-VL configs come back with a nested text_config)."""
    from transformers import AutoConfig

    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a Hugging Face model directory")
    model_type = json.loads(path.read_text()).get("model_type")
    if model_type not in ("qwen2", "qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"{path}: model_type {model_type!r}; expected a stock Qwen2-VL / Qwen2.5-VL (vision) or a "
                         "Qwen2-family causal LM (language)")
    return AutoConfig.from_pretrained(directory).to_dict()


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors weights (convert .bin checkpoints first)")
    return files


def _tensors(directory: Path):
    """(name, tensor) of every weight of the directory, one tensor in memory at a time."""
    from safetensors import safe_open

    for path in _weight_files(directory):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def _language_config(donor: dict, where: Path) -> dict:
    if donor.get("model_type") != "qwen2":
        raise ValueError(f"{where}/config.json: model_type {donor.get('model_type')!r}; the language model must be a "
                         "Qwen2-family causal LM (model_type 'qwen2': Qwen2-7B, Qwen2.5-7B, ...)")
    return donor


def _rope_theta(config: dict) -> float | None:
    return (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta"))


def check_fit(vl: dict, donor: dict, vl_dir: Path, donor_dir: Path) -> None:
    """Raise ValueError naming both files when the donor cannot take the vision tower's place."""
    text = vl.get("text_config") or vl
    merger_out = (vl.get("vision_config") or {}).get("out_hidden_size") or (vl.get("vision_config") or {}).get(
        "hidden_size")
    problems = []
    if donor["hidden_size"] != merger_out:
        problems.append(f"the vision merger outputs {merger_out} features but the language model's hidden_size is "
                        f"{donor['hidden_size']}")
    head_dim = donor.get("head_dim") or donor["hidden_size"] // donor["num_attention_heads"]
    section = (text.get("rope_parameters") or {}).get("mrope_section") or (text.get("rope_scaling") or {}).get(
        "mrope_section")
    if section and sum(section) * 2 != head_dim:
        problems.append(f"mrope_section {section} needs head_dim {sum(section) * 2}, the language model has {head_dim}")
    special = {key: vl[key] for key in ("image_token_id", "video_token_id", "vision_start_token_id",
                                        "vision_end_token_id") if vl.get(key) is not None}
    too_big = {key: value for key, value in special.items() if value >= donor["vocab_size"]}
    if too_big:
        problems.append(f"vision token ids {too_big} do not fit the language model's vocab_size {donor['vocab_size']}")
    if problems:
        raise ValueError(f"{donor_dir} cannot be joined to the vision tower of {vl_dir}: " + "; ".join(problems))


def check_tokenizers(vl_dir: Path, donor_dir: Path) -> None:
    """The donor's vocabulary must mean the same ids in the vision-language model's tokenizer (the one written)."""
    from transformers import AutoTokenizer

    ours, theirs = AutoTokenizer.from_pretrained(vl_dir), AutoTokenizer.from_pretrained(donor_dir)
    vocab = ours.get_vocab()
    differing = [(token, index, vocab.get(token)) for token, index in theirs.get_vocab().items()
                 if vocab.get(token) != index]
    if differing:
        token, index, other = differing[0]
        raise ValueError(f"the tokenizers of {donor_dir} and {vl_dir} differ on {len(differing)} tokens (e.g. "
                         f"{token!r}: {index} vs {other}); the language model was trained with other token ids")


def make_base(vision_dir: str | Path, language_dir: str | Path, out: str | Path) -> Path:
    """Write ``out``: ``vision_dir``'s vision tower + ``language_dir``'s language model. Returns ``out``."""
    from safetensors.torch import save_file

    vision_dir, language_dir, out = Path(vision_dir), Path(language_dir), Path(out)
    vl, donor = _config(vision_dir), _language_config(_config(language_dir), language_dir)
    if vl.get("model_type") not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"{vision_dir}/config.json: model_type {vl.get('model_type')!r}; expected a stock "
                         "Qwen2-VL or Qwen2.5-VL (not a hooked directory)")
    check_fit(vl, donor, vision_dir, language_dir)
    check_tokenizers(vision_dir, language_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)

    config = dict(vl)
    text = dict(vl.get("text_config") or {})
    for field in TEXT_FIELDS:
        if field in donor:
            text[field] = donor[field]
    rope = dict(text.get("rope_parameters") or {})
    if _rope_theta(donor) is not None:
        rope["rope_theta"] = _rope_theta(donor)
    text["rope_parameters"] = rope
    text.pop("layer_types", None)  # rebuilt from num_hidden_layers on load
    config["text_config"] = text
    text["tie_word_embeddings"] = config["tie_word_embeddings"] = donor.get("tie_word_embeddings", False)
    config["made_by"] = {"videorope_train make-base": {"vision": str(vision_dir), "language": str(language_dir)}}

    index, shard, shard_bytes, shards = {}, {}, 0, []

    def flush():
        nonlocal shard, shard_bytes
        if shard:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            shards.append(name)
            index.update({key: name for key in shard})
            shard, shard_bytes = {}, 0

    def add(name, tensor):
        nonlocal shard_bytes
        shard[name] = tensor.contiguous()
        shard_bytes += tensor.numel() * tensor.element_size()
        if shard_bytes >= SHARD_BYTES:
            flush()

    vision = 0
    for name, tensor in _tensors(vision_dir):
        if name.startswith(VISION_PREFIXES):
            add("visual." + name.split("visual.", 1)[1], tensor)
            vision += 1
    language = 0
    for name, tensor in _tensors(language_dir):
        if not name.startswith(("model.", "lm_head.")):
            raise ValueError(f"{language_dir}: unexpected weight {name!r} (a Qwen2 causal LM has model.* and lm_head.*)")
        add(name, tensor)
        language += 1
    flush()
    if not vision:
        raise ValueError(f"{vision_dir}: no vision weights (visual.*) found")
    total = len(shards)
    if total == 1:
        (out / shards[0]).rename(out / "model.safetensors")
    else:
        renamed = {}
        for number, name in enumerate(shards, 1):
            final = f"model-{number:05d}-of-{total:05d}.safetensors"
            (out / name).rename(out / final)
            renamed[name] = final
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {key: renamed[name] for key, name in sorted(index.items())}}, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in PROCESSOR_FILES:
        if (vision_dir / name).is_file():
            shutil.copy2(vision_dir / name, out / name)
    print(f"[make-base] {vision} vision tensors from {vision_dir}, {language} language tensors from {language_dir}")
    return out
