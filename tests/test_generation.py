"""Drop-in generation: beam search, several return sequences, inputs_embeds prompts, stock call signatures."""

import pytest
import torch
from conftest import FAMILIES, load_hooked, make_inputs
from test_hook import MIXED

from videorope_train.hook.prepare import FAMILIES as FAMILY_TABLE
from videorope_train.rope import VARIANTS

NEW = 3
YARN_V = {"extrapolation": "yarn-v", "extrapolation_factor": 4.0, "original_context": 32}  # active: prompts exceed 32
SETTINGS = [(variant, {}) for variant in VARIANTS] + [("videorope", YARN_V)]


def expanded(inputs, copies):
    """The batch with each prompt repeated ``copies`` times in place, visual inputs included (MIXED has one video
    and one image, so repeating each modality's pixels and grids row-wise is each prompt's own expansion)."""
    batch = {"attention_mask": inputs["attention_mask"].repeat_interleave(copies, 0)}
    for pixels, grid in (("pixel_values_videos", "video_grid_thw"), ("pixel_values", "image_grid_thw")):
        assert inputs[grid].shape[0] == 1
        batch[pixels], batch[grid] = inputs[pixels].repeat(copies, 1), inputs[grid].repeat(copies, 1)
    return batch


def full_forward_logits(model, sequences, batch):
    mask = torch.cat([batch["attention_mask"], torch.ones(sequences.shape[0], NEW, dtype=torch.long)], dim=1)
    with torch.no_grad():
        return model(input_ids=sequences, **{**batch, "attention_mask": mask}).logits.float()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant, settings", SETTINGS)
def test_beam_search_scores_equal_full_forward(hooked_dir, variant, settings, family):
    path = hooked_dir(variant, family=family, **settings)
    model = load_hooked(path)
    inputs = make_inputs(path, MIXED)
    beams = 2
    with torch.no_grad():
        out = model.generate(**inputs, num_beams=beams, num_return_sequences=beams, max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False, length_penalty=0.0, output_scores=True,
                             return_dict_in_generate=True)
    assert out.sequences.shape[0] == len(MIXED) * beams
    prompt = inputs["input_ids"].shape[1]
    logits = full_forward_logits(model, out.sequences, expanded(inputs, beams))
    logprob = logits[:, prompt - 1:-1].log_softmax(-1).gather(-1, out.sequences[:, prompt:, None]).sum(dim=(1, 2))
    torch.testing.assert_close(out.sequences_scores.float(), logprob, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("beams", [1, 2])
def test_stock_equivalent_variant_generates_stocks_tokens(hooked_dir, family, beams):
    """Greedy and beam search: the family's stock-equivalent variant (Qwen3-VL: mrope-interleaved) gives stock's
    tokens; stock computes its own positions (Qwen3-VL: from the processor's mm_token_type_ids)."""
    from transformers import AutoModelForImageTextToText

    path = hooked_dir(FAMILY_TABLE[family].stock_variant, family=family)
    hooked = load_hooked(path)
    inputs = make_inputs(path, MIXED)
    kwargs = dict(num_beams=beams, num_return_sequences=beams, max_new_tokens=NEW, min_new_tokens=NEW,
                  do_sample=False)
    with torch.no_grad():
        ours = hooked.generate(**inputs, **kwargs)
        stock = AutoModelForImageTextToText.from_pretrained(hooked_base(path)).eval()
        assert not type(stock).__module__.startswith("transformers_modules")
        theirs = stock.generate(**inputs, **kwargs)
    assert torch.equal(ours, theirs)


def hooked_base(path):
    """The stock directory a hooked one was prepared from (its files are links into it)."""
    return (path / "model.safetensors").resolve().parent


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant, settings", SETTINGS)
def test_sampling_several_return_sequences_equal_full_forward(hooked_dir, variant, settings, family):
    path = hooked_dir(variant, family=family, **settings)
    model = load_hooked(path)
    inputs = make_inputs(path, MIXED)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=True, num_return_sequences=2, max_new_tokens=NEW,
                             min_new_tokens=NEW, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 2 * len(MIXED)
    prompt = inputs["input_ids"].shape[1]
    full = full_forward_logits(model, out.sequences, expanded(inputs, 2))
    for step in range(NEW):
        torch.testing.assert_close(out.logits[step].float(), full[:, prompt - 1 + step], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_text_only_inputs_embeds_generation_equals_input_ids(hooked_dir, variant):
    path = hooked_dir(variant)
    model = load_hooked(path)
    inputs = make_inputs(path, [("text", "Hi"), ("text", "Tell me a story about a cat.")])
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    kwargs = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)
    with torch.no_grad():
        from_ids = model.generate(**inputs, **kwargs)
        from_embeds = model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], **kwargs)
    assert torch.equal(from_embeds.sequences, from_ids.sequences[:, inputs["input_ids"].shape[1]:])
    for a, b in zip(from_embeds.logits, from_ids.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_get_rope_index_takes_stock_positional_order(hooked_dir, family):
    path = hooked_dir("videorope", family=family)
    model = load_hooked(path)
    inputs = make_inputs(path, MIXED)
    keyword = model.model.get_rope_index(inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"],
                                         video_grid_thw=inputs["video_grid_thw"],
                                         attention_mask=inputs["attention_mask"])
    mm_token_type_ids = torch.zeros_like(inputs["input_ids"])
    middle = (None,) if family == "qwen2_5_vl" else ()  # Qwen2.5-VL's second_per_grid_ts
    positional = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids, inputs["image_grid_thw"],
                                            inputs["video_grid_thw"], *middle, inputs["attention_mask"])
    assert torch.equal(positional[0], keyword[0]) and torch.equal(positional[1], keyword[1])
    with pytest.raises(TypeError, match="multiple values for argument 'attention_mask'"):
        model.model.get_rope_index(inputs["input_ids"], None, None, None, *middle, inputs["attention_mask"],
                                   attention_mask=inputs["attention_mask"])


def test_dynamic_extrapolation_beams_and_samples(hooked_dir):
    """Dynamic NTK rescales as the context grows (keys cached earlier keep their base, as in transformers), so
    decoding is not a full forward; beams and several samples still run, and the prefill's scores are exact."""
    path = hooked_dir("videorope", extrapolation="dynamic", extrapolation_factor=4.0, original_context=32)
    model = load_hooked(path)
    inputs = make_inputs(path, MIXED)
    with torch.no_grad():
        beams = model.generate(**inputs, num_beams=2, num_return_sequences=2, max_new_tokens=NEW,
                               min_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True)
        samples = model.generate(**inputs, do_sample=True, num_return_sequences=2, max_new_tokens=NEW,
                                 min_new_tokens=NEW, output_logits=True, return_dict_in_generate=True)
        prefill = model(**inputs).logits[:, -1].float()
    assert beams.sequences.shape == samples.sequences.shape == (2 * len(MIXED), inputs["input_ids"].shape[1] + NEW)
    torch.testing.assert_close(samples.logits[0].float(), prefill.repeat_interleave(2, 0), rtol=1e-4, atol=1e-4)
