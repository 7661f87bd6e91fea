"""One kernel call for the int4 linears that read the same input.

An attention block multiplies one hidden state by q_proj, k_proj and v_proj, an MLP by gate_proj and
up_proj. At decode each of those is a matrix-vector product of a few hundred microseconds or less,
so the fixed cost of a call (Python, ctypes, the OpenMP fork/join, quantizing the activation) is a
real share of it. `fuse_shared_inputs` concatenates such siblings' codes and grids into one matrix
(the members keep row views of it, so nothing is stored twice and saving is unchanged) and
the first member called computes every member's rows in one native call; the others take
their slice.

Which siblings are tried comes from the caller (for a model: the architecture table's q/k/v and
gate/up roles, `slmkit.models.arch.shared_input_sites`). Correctness
does not rest on that: a member reuses the group's result only when it is
given the very tensor object the result was computed from (`is`, while the group holds a
reference, so the object cannot be a recycled one) and has not taken its slice of that result
yet; anything else recomputes. Only the native int4 decode path is fused; prefill-sized inputs
and every other kernel run per layer as before.
"""

from __future__ import annotations

import torch

from slmkit.runtime.kernels import Int4Linear


class SharedInput:
    """The concatenated weights of `members` and the most recent result."""

    def __init__(self, members: list[Int4Linear]):
        self.in_features, self.group_size = members[0].in_features, members[0].group_size
        self.nibbles = torch.cat([m.nibbles for m in members])
        self.scale = torch.cat([m.scale for m in members])
        self.zero = torch.cat([m.zero for m in members])
        self.out_features = self.nibbles.shape[0]
        self.rows: list[tuple[int, int]] = []
        start = 0
        for i, m in enumerate(members):
            rows = slice(start, start + m.out_features)
            self.rows.append((rows.start, rows.stop))
            four_bit = m.packed_codes.data_ptr() == m.nibbles.data_ptr()
            m.nibbles, m.scale, m.zero = self.nibbles[rows], self.scale[rows], self.zero[rows]
            if four_bit:  # the codes are the nibbles: keep one copy
                m.packed_codes = m.nibbles.view(torch.int32)
            m._shared, m._shared_index = self, i
            start = rows.stop
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._taken: set[int] = set()

    def output(self, index: int, x: torch.Tensor, x2: torch.Tensor, call) -> torch.Tensor:
        """Member `index`'s output [rows, out] for the module input `x` (the identity checked),
        given as the 2-D float32 `x2`; `call` runs the native kernel (the member's `_native`)."""
        if x is not self._x or index in self._taken:
            y = torch.empty(x2.shape[0], self.out_features)
            call("int4_gemv", x2.data_ptr(), x2.shape[0], self.in_features, self.nibbles.data_ptr(),
                 self.scale.data_ptr(), self.zero.data_ptr(), self.out_features,
                 self.group_size or self.in_features, y.data_ptr())
            self._x, self._y, self._taken = x, y, set()
        self._taken.add(index)
        a, b = self.rows[index]
        out = self._y[:, a:b]
        if len(self._taken) == len(self.rows):  # everyone served: drop the references
            self._x = self._y = None
        return out if out.is_contiguous() else out.contiguous()


def fuse_shared_inputs(sites: list[list[torch.nn.Module]]) -> int:
    """Group the linears of each site (the modules that read one input: for a model,
    `slmkit.models.arch.shared_input_sites`) that run on the native int4 kernel with the same
    input width, bits and group size; returns how many groups."""
    groups = 0
    for site in sites:
        members = [m for m in site if isinstance(m, Int4Linear) and m._native_ok and m._shared is None]
        by_shape: dict[tuple, list[Int4Linear]] = {}
        for m in members:
            by_shape.setdefault((m.in_features, m.group_size, m.bits), []).append(m)
        for same in by_shape.values():
            if len(same) > 1:
                SharedInput(same)
                groups += 1
    return groups
