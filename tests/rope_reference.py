"""An independent, per-token formulation of the spec's position table, for property tests.

Written straight from `docs/method.md` ("The four position layouts"), token by token, sharing no code
with `videorope_train.rope`.  Slow on purpose.
"""

VS, VE, IMG, VID = 151652, 151653, 151655, 151656


def reference_positions(variant, tokens, grids, stride=2.0, merge=2, paper_after=False, paper_center=False,
                        ends=None):
    """tokens: valid token ids of one sample; grids: list of (T, H0, W0) in block order.

    ``ends``: per block, whether it ends its video (Qwen3-VL's one-frame blocks: a frame followed by more frames of
    its video hands on δ after its time index, whatever the form); None = every block does.
    Returns (rows t, h, w as lists, next position).  MRoPE-I ("mrope-interleaved") places tokens as M-RoPE does."""
    if variant == "mrope-interleaved":
        variant = "mrope"
    t_row, h_row, w_row = [], [], []
    text_pos = 0.0  # position of the next text token (TAD: its time index)
    grid_iter = iter(grids)
    end_iter = iter(ends if ends is not None else [True] * len(grids))
    i = 0
    while i < len(tokens):
        if tokens[i] in (IMG, VID):
            T, H0, W0 = next(grid_iter)
            last_of_video = next(end_iter)
            H, W = H0 // merge, W0 // merge
            s = text_pos
            for k in range(T):
                for r in range(H):
                    for c in range(W):
                        if variant == "videorope":
                            t = s + stride * k
                            ch = H / 2 if paper_center else (H - 1) // 2
                            cw = W / 2 if paper_center else (W - 1) // 2
                            t_row.append(t), h_row.append(t + r - ch), w_row.append(t + c - cw)
                        elif variant == "mrope":
                            t_row.append(s + k), h_row.append(s + r), w_row.append(s + c)
                        elif variant == "tad":
                            t_row.append(s + k), h_row.append(s + k), w_row.append(s + k)
                        else:  # vanilla
                            v = len(t_row)
                            t_row.append(v), h_row.append(v), w_row.append(v)
            i += T * H * W
            if variant == "videorope":
                text_pos = s + stride * T if paper_after or not last_of_video else s + stride * (T - 1) + 1
            elif variant == "mrope":
                text_pos = max(t_row[-T * H * W :] + h_row[-T * H * W :] + w_row[-T * H * W :]) + 1
            elif variant == "tad":
                text_pos = s + T
            else:
                text_pos = len(t_row)
            continue
        t_row.append(text_pos), h_row.append(text_pos), w_row.append(text_pos)
        text_pos += 1
        i += 1
    if variant == "tad":
        n = len(t_row)
        rows = [[p + v for v, p in enumerate(row)] for row in (t_row, h_row, w_row)]
        return rows, text_pos + n
    return [t_row, h_row, w_row], text_pos


def reference_batch_rows(variant, config, input_ids, attention_mask, image_grid_thw=None, video_grid_thw=None,
                         stride=2.0, frame_blocks=False):
    """Per sample of a processor/collator batch: (valid-token mask, the reference rows [3, valid] as float64, the
    position the next token takes).

    Visual blocks are found from the tokens (a block starts after ``vision_start_token_id``); grids are taken in
    order from the batch's image and video grids; ``config`` is the model's config.json as a dict.
    ``frame_blocks`` (Qwen3-VL): a video of T temporal patches is T one-frame blocks, each after its own vision
    start; only the last ends the video."""
    import torch

    videos = [tuple(grid.tolist()) for grid in (video_grid_thw if video_grid_thw is not None else [])]
    if frame_blocks:
        videos = [((1, h, w), k == t - 1) for t, h, w in videos for k in range(t)]
    else:
        videos = [(grid, True) for grid in videos]
    grids = {"image": iter([(tuple(grid.tolist()), True) for grid in (image_grid_thw if image_grid_thw is not None
                                                                       else [])]),
             "video": iter(videos)}
    as_reference = {config["video_token_id"]: VID, config["image_token_id"]: IMG}  # the reference's token ids
    merge = config["vision_config"]["spatial_merge_size"]
    samples = []
    for row in range(input_ids.shape[0]):
        valid = attention_mask[row].bool()
        tokens = input_ids[row][valid].tolist()
        block_grids, block_ends = [], []
        for index, token in enumerate(tokens):
            if index and tokens[index - 1] == config["vision_start_token_id"]:
                kind = "video" if token == config["video_token_id"] else "image"
                grid, last_of_video = next(grids[kind])
                block_grids.append(grid), block_ends.append(last_of_video)
        tokens = [as_reference.get(token, token) for token in tokens]
        rows, following = reference_positions(variant, tokens, block_grids, stride=stride, merge=merge,
                                              ends=block_ends)
        samples.append((valid, torch.tensor(rows, dtype=torch.float64), following))
    return samples
