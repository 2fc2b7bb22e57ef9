"""The Qwen2-VL hook, in process: loading, positions, rotary path, generation, packing, reload."""

import json

import pytest
import torch
from conftest import FAMILIES, load_hooked, make_inputs
from rope_reference import reference_batch_rows

from videorope_train.hook.prepare import FAMILIES as FAMILY_TABLE
from videorope_train.rope import VARIANTS, RopeConfig, rotary_cos_sin, scaled_inv_freq
from videorope_train.rope import frequency_axes

MIXED = [("video", "What happens in the video?"), ("text", "Hi"), ("image", "Describe the picture please.")]


def visual_kwargs(inputs):
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}


def test_loading_without_trust_remote_code_fails_loudly(hooked_dir):
    from transformers import AutoModelForImageTextToText

    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForImageTextToText.from_pretrained(hooked_dir("videorope"))


def test_config_block_validated(hooked_dir, tmp_path):
    from transformers import AutoConfig

    path = hooked_dir("videorope")
    config = json.loads((path / "config.json").read_text())
    config["videorope"]["variant"] = "rope3d"
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in path.iterdir():
        if item.name != "config.json":
            (broken / item.name).symlink_to(item.resolve())
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="variant='rope3d' is unknown"):
        AutoConfig.from_pretrained(broken, trust_remote_code=True)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])  # Qwen2.5-VL places tokens as Qwen2-VL does
@pytest.mark.parametrize("variant", VARIANTS)
def test_model_positions_equal_the_per_token_reference(hooked_dir, variant, family):
    """The loaded model's positions for a left-padded mixed video/image/text batch: every valid token equals the
    independent per-token reference (tests/rope_reference.py), padding is 1, and rope_deltas places the first
    generated token at the reference's next position.  Qwen3-VL's video is one block per temporal patch, each after
    its timestamp text."""
    path = hooked_dir(variant, family=family)
    model = load_hooked(path)
    inputs = make_inputs(path, MIXED)
    positions, deltas = model.get_rope_index(**inputs)
    config = json.loads((path / "config.json").read_text())
    if family == "qwen3_vl":
        frames = int(inputs["video_grid_thw"][0, 0])
        assert frames > 1 and int((inputs["input_ids"] == config["vision_start_token_id"]).sum()) == frames + 1
    samples = reference_batch_rows(variant, config, inputs["input_ids"], inputs["attention_mask"],
                                   inputs.get("image_grid_thw"), inputs.get("video_grid_thw"),
                                   frame_blocks=family == "qwen3_vl")
    length = inputs["input_ids"].shape[1]
    for row, (valid, expected, following) in enumerate(samples):
        assert torch.equal(positions[:, row][:, valid].to(torch.float64), expected), f"sample {row}"
        assert (positions[:, row][:, ~valid] == 1).all()
        # the first generated token (cache position = padded length) takes the reference's next position:
        # p + rope_deltas, for TAD-RoPE 2p + rope_deltas
        step = 2 if variant == "tad" else 1
        assert float(deltas[row]) == following - step * length, f"sample {row}"


def test_mrope_hook_equals_stock_qwen2vl(hooked_dir, tiny_base):
    from transformers import AutoModelForImageTextToText

    path = hooked_dir("mrope")
    hooked = load_hooked(path)
    stock = AutoModelForImageTextToText.from_pretrained(tiny_base).eval()
    assert type(stock).__module__.startswith("transformers.models.qwen2_vl")
    inputs = make_inputs(path, MIXED)
    positions, _ = hooked.get_rope_index(**inputs)
    with torch.no_grad():
        ours = hooked(**inputs, position_ids=positions).logits
        theirs = stock(**inputs, position_ids=positions).logits
        videorope = load_hooked(hooked_dir("videorope"))(**inputs).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(videorope, ours, atol=1e-4)  # the variant really changes the model


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_interleaved_mrope_hook_equals_stock_qwen3vl(hooked_dir, family):
    """Stock Qwen3-VL places its positions itself (from the processor's mm_token_type_ids) and interleaves the
    frequencies; the hooked mrope-interleaved model must give its logits on a left-padded mixed batch, where the
    video is a block per temporal patch with timestamp text between.  fp32: differences are summation order only."""
    from transformers import AutoModelForImageTextToText

    path = hooked_dir("mrope-interleaved", family=family)
    hooked = load_hooked(path)
    stock = AutoModelForImageTextToText.from_pretrained((path / "model.safetensors").resolve().parent).eval()
    assert type(stock).__module__ == f"transformers.models.{family}.modeling_{family}"
    inputs = make_inputs(path, MIXED)
    assert "mm_token_type_ids" in inputs and inputs["video_grid_thw"][0, 0] > 1
    valid = inputs["attention_mask"].bool()
    with torch.no_grad():
        ours = hooked(**inputs).logits
        theirs = stock(**inputs).logits
        chunked = load_hooked(hooked_dir("mrope", family=family))(**inputs).logits
        videorope = load_hooked(hooked_dir("videorope", family=family))(**inputs).logits
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-5, atol=1e-5)
    for other in (chunked, videorope):  # the frequency allocation and the layout really change the model
        assert not torch.allclose(other[valid], ours[valid], atol=1e-4)


@pytest.mark.parametrize("variant, settings", [(v, {}) for v in VARIANTS] + [("videorope", {"temporal_stride": 1.5})])
def test_generate_with_cache_equals_full_forward(hooked_dir, variant, settings):
    path = hooked_dir(variant, **settings)
    model = load_hooked(path)
    inputs = make_inputs(path, MIXED)
    new = 4
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        length = inputs["input_ids"].shape[1]
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(MIXED), new, dtype=torch.long)], dim=1)
        full = model(input_ids=out.sequences, attention_mask=mask, **visual_kwargs(inputs)).logits
    for step in range(new):
        torch.testing.assert_close(out.logits[step], full[:, length - 1 + step], rtol=1e-4, atol=1e-4)


def test_rope_deltas_not_reused_across_calls(hooked_dir):
    path = hooked_dir("videorope")
    model = load_hooked(path)
    video = make_inputs(path, [MIXED[0]])
    text = make_inputs(path, [("text", "Tell me something else entirely.")])
    with torch.no_grad():
        model.generate(**video, max_new_tokens=3, do_sample=False)
        after_video = model.generate(**text, max_new_tokens=4, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
        fresh = load_hooked(path).generate(**text, max_new_tokens=4, do_sample=False, output_logits=True,
                                           return_dict_in_generate=True)
    assert torch.equal(after_video.sequences, fresh.sequences)
    for a, b in zip(after_video.logits, fresh.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_two_variants_in_one_process(hooked_dir):
    mrope_path, videorope_path = hooked_dir("mrope"), hooked_dir("videorope")
    inputs = make_inputs(mrope_path, MIXED)
    with torch.no_grad():
        mrope = load_hooked(mrope_path)
        first = mrope(**inputs).logits
        videorope = load_hooked(videorope_path)
        other = videorope(**inputs).logits
        again = mrope(**inputs).logits
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other, atol=1e-4)


def test_packed_rows_equal_unpacked_samples(hooked_dir):
    """LLaMA-Factory's packed layout ([t; t; h; w] rows, no attention mask) under sdpa == separate samples."""
    path = hooked_dir("videorope")
    model = load_hooked(path)
    first = make_inputs(path, [MIXED[0]])
    second = make_inputs(path, [("text", "A second, text-only sample in the same row.")])
    with torch.no_grad():
        logits_first = model(**first).logits
        logits_second = model(**second).logits
        rows = torch.cat([model.get_rope_index(**first)[0], model.get_rope_index(**second)[0]], dim=-1)
        packed_positions = torch.cat([rows[:1], rows], dim=0)  # what the collator passes
        packed = model(
            input_ids=torch.cat([first["input_ids"], second["input_ids"]], dim=1),
            position_ids=packed_positions,
            pixel_values_videos=first["pixel_values_videos"],
            video_grid_thw=first["video_grid_thw"],
            use_cache=False,  # as in training: packed-sequence masks are only built without a cache
        ).logits
    split = first["input_ids"].shape[1]
    torch.testing.assert_close(packed[:, :split], logits_first, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed[:, split:], logits_second, rtol=1e-4, atol=1e-4)


def test_checkpoint_reload_is_self_describing(hooked_dir, tmp_path):
    path = hooked_dir("videorope", temporal_stride=3.0)
    model = load_hooked(path)
    inputs = make_inputs(path, MIXED)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["videorope"]["temporal_stride"] == 3.0 and saved["model_type"] == "qwen2_vl_videorope"
    assert (tmp_path / "saved" / "modeling_videorope.py").is_file()
    reloaded = load_hooked(tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_extrapolation_applies_at_inference_only(hooked_dir):
    settings = dict(extrapolation="yarn-v", extrapolation_factor=4.0, original_context=64)
    path = hooked_dir("videorope", **settings)
    model = load_hooked(path)
    rotary = model.model.language_model.rotary_emb
    cfg = RopeConfig("videorope", **settings)
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    section = text.rope_parameters["mrope_section"]
    positions = torch.arange(200).view(1, 1, -1).expand(3, 1, -1)
    axes = frequency_axes(cfg, section)
    x = torch.zeros(1, dtype=torch.float32)
    scaled = rotary_cos_sin(positions, scaled_inv_freq(cfg, head_dim, 1e6, section), axes)
    plain = rotary_cos_sin(positions, scaled_inv_freq(RopeConfig("videorope"), head_dim, 1e6, section), axes)
    torch.testing.assert_close(rotary(x, positions)[0], scaled[0])
    rotary.train()
    torch.testing.assert_close(rotary(x, positions)[0], plain[0])
    assert not torch.allclose(scaled[0], plain[0])


def test_mismatched_video_tokens_name_the_sample(hooked_dir):
    path = hooked_dir("videorope")
    model = load_hooked(path)
    inputs = make_inputs(path, [("text", "padding row"), MIXED[0]], padding_side="right")
    ids = inputs["input_ids"].clone()
    video_positions = (ids[1] == model.config.video_token_id).nonzero().flatten()
    ids[1, video_positions[-1]] = ids[1, 0]  # one video token lost, as when cutoff_len truncates
    with pytest.raises(ValueError, match=r"sample 1: video block 0 .* has \d+ video tokens"):
        model.get_rope_index(ids, video_grid_thw=inputs["video_grid_thw"], attention_mask=inputs["attention_mask"])


def test_version_check_rejects_unsupported(monkeypatch):
    from importlib import metadata

    from videorope_train import hook

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "4.45.2" if name == "transformers" else real(name))
    with pytest.raises(ImportError, match="supports transformers >=5.6.0,<=5.8.0 but 4.45.2 is installed"):
        hook.check_versions()
    for inside in ("5.6.0", "5.7.0", "5.8.0"):  # the window's ends and a release in between
        monkeypatch.setattr(metadata, "version", lambda name, v=inside: v if name == "transformers" else real(name))
        hook.check_versions()
    monkeypatch.setattr(metadata, "version", lambda name: "5.8.1" if name == "transformers" else real(name))
    with pytest.raises(ImportError, match="but 5.8.1 is installed"):
        hook.check_versions()
    monkeypatch.setattr(metadata, "version", lambda name: "0.9.6.dev0" if name == "llamafactory" else real(name))
    hook.check_versions()  # LLaMA-Factory's main branch
    for outside in ("0.9.4", "0.9.6"):  # an older release; a 0.9.6 nobody has tested yet
        monkeypatch.setattr(metadata, "version", lambda name, v=outside: v if name == "llamafactory" else real(name))
        with pytest.raises(ImportError, match=f"supports llamafactory >=0.9.5,<=0.9.6.dev0 but {outside}"):
            hook.check_versions()


@pytest.mark.parametrize("family", FAMILIES)
def test_one_vision_pass_for_images_and_videos(hooked_dir, family):
    """Joint vision pass (one ZeRO-3 gather per step) gives the stock per-modality features — Qwen3-VL's deepstack
    features included, which stock adds to the first language layers' image and video tokens."""
    from transformers import AutoModelForImageTextToText

    path = hooked_dir(FAMILY_TABLE[family].stock_variant, family=family)
    hooked = load_hooked(path)
    stock = AutoModelForImageTextToText.from_pretrained((path / "model.safetensors").resolve().parent).eval()
    inputs = make_inputs(path, MIXED)
    calls, stock_calls = [], []  # the modules whose parameters ZeRO-3 gathers, in the order they run
    for model, record in ((hooked, calls), (stock, stock_calls)):
        model.model.visual.register_forward_pre_hook(lambda *args, record=record: record.append("tower"))
        model.get_input_embeddings().register_forward_pre_hook(lambda *args, record=record: record.append("embed"))
    positions, _ = hooked.get_rope_index(**inputs)
    with torch.no_grad():
        ours = hooked(**inputs, position_ids=positions).logits
        theirs = stock(**inputs, position_ids=positions).logits
    # one tower call, in stock's order (embedding first): ZeRO-3 ranks with one modality gather embed, then tower
    assert stock_calls == ["embed", "tower", "tower"] and calls == ["embed", "tower"]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert hooked.model._joint_vision is None  # nothing of this batch is left on the model


def test_eager_attention_matches_sdpa(hooked_dir):
    from transformers import AutoModelForImageTextToText

    path = hooked_dir("videorope")
    inputs = make_inputs(path, MIXED)
    eager = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, attn_implementation="eager")
    valid = inputs["attention_mask"].bool()  # padded positions' outputs are undefined
    with torch.no_grad():
        torch.testing.assert_close(eager.eval()(**inputs).logits[valid], load_hooked(path)(**inputs).logits[valid],
                                   rtol=1e-4, atol=1e-4)


def test_fractional_positions_survive_a_bf16_collator(hooked_dir):
    """LLaMA-Factory casts floating batch tensors to the compute dtype; δ = 1.5 positions are rebuilt exactly."""
    path = hooked_dir("videorope", temporal_stride=1.5)
    model = load_hooked(path)
    inputs = make_inputs(path, [("video", "What happens? " + "Tell me more about it. " * 40)])
    positions, _ = model.get_rope_index(**inputs)
    assert positions.dtype == torch.float32 and (positions.frac() != 0).any() and positions.max() > 300
    collated = torch.cat([positions[:1], positions]).to(torch.bfloat16)  # [text; t; h; w], cast like the collator
    assert not torch.equal(collated[1:].float(), positions)  # bf16 really loses them
    with torch.no_grad():
        exact = model(**inputs, position_ids=positions).logits
        rebuilt = model(**inputs, position_ids=collated).logits
        torch.testing.assert_close(rebuilt, exact, rtol=1e-5, atol=1e-5)
        packed = torch.cat([collated, collated], dim=-1)
        with pytest.raises(ValueError, match="cannot hold fractional positions"):
            model(input_ids=torch.cat([inputs["input_ids"]] * 2, dim=1), position_ids=packed,
                  pixel_values_videos=inputs["pixel_values_videos"].repeat(2, 1),
                  video_grid_thw=inputs["video_grid_thw"].repeat(2, 1), use_cache=False)


def test_qwen2_5_vl_hook(hooked_dir):
    """Qwen2.5-VL: mrope hook equals stock Qwen2.5-VL given the same positions; generate == full forward."""
    from transformers import AutoModelForImageTextToText

    path = hooked_dir("mrope", family="qwen2_5_vl")
    hooked = load_hooked(path)
    assert type(hooked).__name__ == "VideoRopeQwen2_5_VLForConditionalGeneration"
    stock = AutoModelForImageTextToText.from_pretrained(path.parent.parent / "base-qwen2_5_vl").eval()
    assert type(stock).__module__.startswith("transformers.models.qwen2_5_vl")
    inputs = make_inputs(path, MIXED)
    positions, _ = hooked.get_rope_index(**inputs)
    with torch.no_grad():
        torch.testing.assert_close(hooked(**inputs, position_ids=positions).logits,
                                   stock(**inputs, position_ids=positions).logits, rtol=1e-5, atol=1e-5)
    videorope_path = hooked_dir("videorope", family="qwen2_5_vl")
    model = load_hooked(videorope_path)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(MIXED), 3, dtype=torch.long)], dim=1)
        full = model(input_ids=out.sequences, attention_mask=mask, **visual_kwargs(inputs)).logits
    length = inputs["input_ids"].shape[1]
    for step in range(3):
        torch.testing.assert_close(out.logits[step], full[:, length - 1 + step], rtol=1e-4, atol=1e-4)


def test_generate_ignores_caller_positions_and_names_unsupported_masks(hooked_dir):
    path = hooked_dir("tad")
    model = load_hooked(path)
    inputs = make_inputs(path, MIXED)
    positions, _ = model.get_rope_index(**inputs)
    kwargs = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)
    with torch.no_grad():
        plain = model.generate(**inputs, **kwargs)
        given = model.generate(**inputs, position_ids=torch.cat([positions[:1], positions]), **kwargs)
        for a, b in zip(plain.logits, given.logits):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        with pytest.raises(ValueError, match="need input_ids"):
            embeds = model.get_input_embeddings()(inputs["input_ids"])
            model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], **visual_kwargs(inputs))
        with pytest.raises(ValueError, match="2-D padding mask"):
            model.generate(**inputs, max_new_tokens=2, cache_implementation="static")


def test_checkpoints_record_their_writer_and_warn_on_other_positions(hooked_dir, tmp_path, recwarn):
    import videorope_train
    from videorope_train.rope import POSITIONS_VERSION

    writer = {"videorope_train": videorope_train.__version__, "positions": POSITIONS_VERSION}
    path = hooked_dir("videorope")
    assert json.loads((path / "config.json").read_text())["videorope"]["written_by"] == writer  # prepare-model
    load_hooked(path).save_pretrained(tmp_path / "saved")
    config_path = tmp_path / "saved" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["videorope"]["written_by"] == writer  # every checkpoint
    load_hooked(tmp_path / "saved")
    assert not [w for w in recwarn if "computes positions differently" in str(w.message)]
    config["videorope"]["written_by"] = {"videorope_train": "0.0.9", "positions": POSITIONS_VERSION + 1}
    config_path.write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"written by videorope-train 0\.0\.9 .* computes positions differently"):
        model = load_hooked(tmp_path / "saved")
    assert model.rope == RopeConfig("videorope")  # the provenance record is not a setting


def test_a_correct_load_warns_nothing_about_the_model_type(hooked_dir, monkeypatch):
    """config.json's hooked marker (qwen2_vl_videorope) is read as the stock type by the class it names: no
    "You are using a model of type ... to instantiate a model of type ..." on a correct load, which is the line the
    README names as the symptom of a wrong one (a stock class on a hooked directory)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, configuration_utils

    warned = []
    monkeypatch.setattr(configuration_utils.logger, "warning", lambda message, *args, **kwargs: warned.append(message))
    model_dir = hooked_dir("videorope")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True)
    assert config.model_type == "qwen2_vl" and config.to_dict()["model_type"] == "qwen2_vl_videorope"
    assert not [m for m in warned if "to instantiate a model of type" in m], warned
    stock = configuration_utils.PretrainedConfig.get_config_dict(str(model_dir))[0]["model_type"]
    assert stock == "qwen2_vl_videorope"  # what a stock class reads: the marker stays in config.json
