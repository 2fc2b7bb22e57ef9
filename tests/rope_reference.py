"""An independent, per-token formulation of the spec's position table, for property tests.

Written straight from `docs/method.md` ("The four position layouts"), token by token, sharing no code
with `videorope_train.rope`.  Slow on purpose.
"""

VS, VE, IMG, VID = 151652, 151653, 151655, 151656


def reference_positions(variant, tokens, grids, stride=2.0, merge=2, paper_after=False, paper_center=False):
    """tokens: valid token ids of one sample; grids: list of (T, H0, W0) in block order.

    Returns (rows t, h, w as lists, next position)."""
    t_row, h_row, w_row = [], [], []
    text_pos = 0.0  # position of the next text token (TAD: its time index)
    grid_iter = iter(grids)
    i = 0
    while i < len(tokens):
        if tokens[i] in (IMG, VID):
            T, H0, W0 = next(grid_iter)
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
                text_pos = s + stride * T if paper_after else s + stride * (T - 1) + 1
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
