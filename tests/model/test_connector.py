"""SVA connector helpers: unpad geometry, key masks, cell layout, frame-position code."""

from __future__ import annotations

import pytest
import torch

from longvu.model.compose import add_frame_pos
from longvu.model.connector import key_mask, to_cells, unpad_window


def grid_size(side: int, hw: tuple[int, int], fix: bool = False) -> tuple[int, int]:
    rs, cs = unpad_window(side, side, hw, fix_orientation=fix)
    return len(range(side)[rs]), len(range(side)[cs])


@pytest.mark.parametrize(
    "hw,high,low",
    [
        ((320, 568), (12, 6), (8, 4)),  # video1 (landscape): the quirk crops columns
        ((320, 480), (12, 8), (8, 6)),  # video3
        ((128, 96), (10, 12), (6, 8)),  # synth_scene (portrait): crops rows
        ((200, 200), (12, 12), (8, 8)),  # square
    ],
)
def test_unpad_matches_reference_table(hw, high, low):
    # the values of the parity README's "Unpad + newline" step
    assert grid_size(12, hw) == high
    assert grid_size(8, (int(hw[0] / 1.5), int(hw[1] / 1.5))) == low


def test_fix_orientation_crops_the_padding_rows():
    # A landscape 320x568 frame padded to a square has padding above and below:
    # the fix keeps 6 of 12 rows (int(320 * 12 / 568) = 6) and every column.
    assert grid_size(12, (320, 568), fix=True) == (6, 12)


def test_key_mask_landscape_quirk():
    # quirk: (320, 568) is read as w=320, h=568 -> columns masked,
    # pad = (24 - int(320 * 24 / 568)) // 2 = (24 - 13) // 2 = 5 patch columns each side
    m = key_mask(24, 12, (320, 568))
    assert m.shape == (144, 4)
    cells = m.view(12, 12, 4)  # keys of a cell, row-major: (r0c0, r0c1, r1c0, r1c1)
    assert (cells[:, 2] == torch.tensor([False, True, False, True])).all()  # patch col 4 masked, 5 kept
    assert (cells[:, 9] == torch.tensor([True, False, True, False])).all()  # col 18 kept, 19 masked
    others = [c for c in range(12) if c not in (2, 9)]
    assert cells[:, others].all()  # fully masked cells (0, 1, 10, 11) are reset to all-True
    cells = key_mask(24, 12, (320, 568), fix_orientation=True).view(12, 12, 4)
    assert (cells[2] == torch.tensor([False, False, True, True])).all()  # rows now
    assert (cells[9] == torch.tensor([True, True, False, False])).all()


def test_key_mask_fully_masked_cells_reset_and_partial_cells():
    # 100 x 150 (read as w=100, h=150): pad = (24 - int(100 * 24 / 150)) // 2 = (24 - 16) // 2 = 4 columns
    cells = key_mask(24, 12, (100, 150)).view(12, 12, 2, 2)
    assert cells[:, :2].all()  # columns 0..3 fully masked -> reset to all-True
    assert cells[:, 2:10].all()


def test_key_mask_odd_padding_gives_partial_cells():
    # 320 x 568: quirk pad = 6 columns -> cell column 3 covers patch columns 6,7 (kept)
    # 320 x 400: pad = (24 - int(320 * 24 / 400)) // 2 = (24 - 19) // 2 = 2
    cells = key_mask(24, 12, (320, 400)).view(12, 12, 2, 2)
    assert cells[:, 0].all()  # fully masked -> reset
    assert cells[:, 1].all()
    # 320 x 440: int(320*24/440) = 17 -> pad 3 -> cell column 1 covers patch columns 2 (masked), 3 (kept)
    cells = key_mask(24, 12, (320, 440)).view(12, 12, 2, 2)
    assert not cells[:, 1, :, 0].any() and cells[:, 1, :, 1].all()


def test_to_cells_row_major_layout():
    x = torch.arange(16.0).view(1, 16, 1)  # a 4x4 grid with values 0..15
    cells = to_cells(x, 2)  # 2x2 cells of 2x2 patches
    assert cells[:, :, 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_frame_pos_quirk_and_fix():
    tokens = torch.zeros(2, 3, 4)
    out = add_frame_pos(tokens, [0, 2])
    w = torch.tensor([1.0, 1.0, 0.01, 0.01])  # 10000 ** (-2 * (j // 2) / 4)
    t = 2 * w
    expected = torch.stack([torch.sin(t[0]), torch.cos(torch.sin(t[0])), torch.sin(t[2]), torch.cos(torch.sin(t[2]))])
    assert torch.allclose(out[1, 0], expected) and torch.allclose(out[1, 2], expected)
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    fixed = add_frame_pos(tokens, [0, 2], fix=True)
    assert torch.allclose(
        fixed[1, 0], torch.stack([torch.sin(t[0]), torch.cos(t[0]), torch.sin(t[2]), torch.cos(t[2])])
    )
