"""A matrix kept as the product of two factors, A @ B, without ever building the product.

Attention heads are low-rank: the QK circuit W_Q @ W_K^T and the OV circuit W_V @ W_O are
d_model x d_model matrices of rank at most d_head (Elhage et al. 2021, "A Mathematical Framework
for Transformer Circuits"). `FactoredMatrix(A, B)` stores A [..., l, m] and B [..., m, r] and
answers questions about A @ B (products, SVD, eigenvalues, norm) through the small factors, so the
cost scales with the inner dim m rather than with l * r.

Conventions:
- Leading (batch) dims of A and B broadcast, and both are stored broadcast to the common batch
  shape (as views, no copy), so `fm.A` may have more dims than the tensor passed in.
- `svd()` follows TransformerLens (and the older `torch.svd`): (U, S, V) with AB == U @ diag(S) @ V^T,
  U [..., l, k], S [..., k], V [..., r, k], k = min(l, m, r), S descending. `.Vh` is TransformerLens's
  name for that same V (historical: it is not V^T), kept so notebooks get the values they expect.
- Products stay factored and keep the smallest available inner dim: fm @ X has inner dim
  min(m, r), X @ fm has min(l, m). A 1-D operand gives a plain tensor.
- Indexing (TransformerLens's rule) selects leading dims, then rows of A, then columns of B, and
  always gives a FactoredMatrix: `fm[indices]` keeps some rows, `fm[:, :100]` some columns.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from jaxtyping import Complex, Float
from torch import Tensor


class FactoredMatrix:
    """The product A @ B of A [..., ldim, mdim] and B [..., mdim, rdim], kept factored."""

    def __init__(self, A: Float[Tensor, "... ldim mdim"], B: Float[Tensor, "... mdim rdim"]) -> None:
        if not (isinstance(A, Tensor) and isinstance(B, Tensor)) or A.ndim < 2 or B.ndim < 2:
            raise ValueError("FactoredMatrix needs two tensors with at least 2 dims each")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(
                f"FactoredMatrix inner dims do not match: A is {tuple(A.shape)} and B is {tuple(B.shape)} "
                f"(A.shape[-1]={A.shape[-1]} != B.shape[-2]={B.shape[-2]})"
            )
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.broadcast_to(*batch, self.ldim, self.mdim)
        self.B = B.broadcast_to(*batch, self.mdim, self.rdim)
        self.shape = torch.Size((*batch, self.ldim, self.rdim))
        self._svd: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def pair(self) -> tuple[Float[Tensor, "... ldim mdim"], Float[Tensor, "... mdim rdim"]]:
        return self.A, self.B

    @property
    def AB(self) -> Float[Tensor, "... ldim rdim"]:
        """The full product, materialized."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "... mdim mdim"]:
        """The inner product B @ A (only defined when the product is square, ldim == rdim)."""
        if self.ldim != self.rdim:
            raise ValueError(f"BA needs a square product (ldim == rdim), but ldim={self.ldim}, rdim={self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.mT, self.A.mT)

    def __matmul__(self, other: Any) -> FactoredMatrix | Float[Tensor, "... ldim"]:
        if isinstance(other, FactoredMatrix):
            if other.ldim != self.rdim:
                raise ValueError(f"Cannot multiply: left rdim={self.rdim} != right ldim={other.ldim}")
            # Going through other.A then other.B lets each step pick the smaller inner dim.
            return (self @ other.A) @ other.B
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim == 0 or other.shape[-2 if other.ndim > 1 else 0] != self.rdim:
            raise ValueError(f"Cannot multiply FactoredMatrix {tuple(self.shape)} by tensor {tuple(other.shape)}")
        if other.ndim == 1:
            # As a column, so a batched B @ v is not mistaken for a matrix by the next matmul.
            return (self.A @ (self.B @ other[:, None]))[..., 0]
        if self.rdim < self.mdim:
            return FactoredMatrix(self.AB, other)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Any) -> FactoredMatrix | Float[Tensor, "... rdim"]:
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim == 0 or other.shape[-1] != self.ldim:
            raise ValueError(f"Cannot multiply tensor {tuple(other.shape)} by FactoredMatrix {tuple(self.shape)}")
        if other.ndim == 1:
            return ((other[None, :] @ self.A) @ self.B)[..., 0, :]
        if self.ldim < self.mdim:
            return FactoredMatrix(other, self.AB)
        return FactoredMatrix(other @ self.A, self.B)

    def __mul__(self, scalar: Any) -> FactoredMatrix:
        """A scalar times the product: a number, or a tensor of one element (`fm * torch.tensor([2.0])`)."""
        if isinstance(scalar, Tensor) and scalar.numel() == 1:
            scalar = scalar.reshape(())
        elif not isinstance(scalar, numbers.Number):
            shape = f" of shape {tuple(scalar.shape)}" if isinstance(scalar, Tensor) else ""
            raise TypeError(
                f"FactoredMatrix can only be multiplied by a scalar (a number or a one-element tensor), got "
                f"{type(scalar).__name__}{shape}; for a matrix use @."
            )
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def svd(self) -> tuple[Float[Tensor, "... ldim k"], Float[Tensor, "... k"], Float[Tensor, "... rdim k"]]:
        """(U, S, V) with AB == U @ diag(S) @ V^T (TransformerLens's convention), from QR of the factors and an
        SVD of a small core.

        A = Qa Ra and B^H = Qb Rb give AB = Qa (Ra Rb^H) Qb^H, so only the core Ra Rb^H, at most
        min(l, m) x min(r, m), is decomposed. Cached after the first call.
        """
        if self._svd is None:
            Qa, Ra = torch.linalg.qr(self.A)
            Qb, Rb = torch.linalg.qr(self.B.mH)
            Uc, S, Vhc = torch.linalg.svd(Ra @ Rb.mH, full_matrices=False)
            self._svd = (Qa @ Uc, S, Qb @ Vhc.mH)
        return self._svd

    @property
    def U(self) -> Float[Tensor, "... ldim k"]:
        return self.svd()[0]

    @property
    def S(self) -> Float[Tensor, "... k"]:
        return self.svd()[1]

    @property
    def V(self) -> Float[Tensor, "... rdim k"]:
        """The right singular vectors as columns: AB == U @ diag(S) @ V^T."""
        return self.svd()[2]

    @property
    def Vh(self) -> Float[Tensor, "... rdim k"]:
        """The same V as `.V` (TransformerLens's name for it; despite the name, not V^T)."""
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Complex[Tensor, "... mdim"]:
        """Eigenvalues of the small mdim x mdim matrix B @ A: its non-zero ones are exactly the
        non-zero eigenvalues of the square product AB; the rest are zeros. Complex, unsorted. Half-precision
        factors are decomposed in float32 (torch has no eigensolver for them)."""
        BA = self.BA
        return torch.linalg.eigvals(BA.float() if BA.dtype in (torch.float16, torch.bfloat16) else BA)

    def norm(self) -> Float[Tensor, "..."]:
        """Frobenius norm of the product, per batch element."""
        return self.S.pow(2).sum(-1).sqrt()

    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index as TransformerLens does: the leading dims first (applied to A and B alike), then the rows
        (applied to A), then the columns (applied to B); `fm[idx].AB == fm.AB[idx]` up to the two rules below.

        - The result is always a FactoredMatrix: an int row or column index keeps its dim (length 1).
        - Rows and columns are selected independently: `fm[rows, cols].AB == fm.AB[rows][:, cols]` when both
          are index tensors (an outer selection, where a tensor would pair them up element by element).

        `...` stands for as many full slices as needed (as for a tensor); None adds a leading dim. A row
        or column index is an int, a slice, or a 1-D tensor or list of ints or booleans.
        """
        idx = idx if isinstance(idx, tuple) else (idx,)
        n_given = sum(entry is not None and entry is not Ellipsis for entry in idx)
        if n_given > self.ndim or sum(entry is Ellipsis for entry in idx) > 1:
            raise IndexError(f"Too many indices ({idx!r}) for a FactoredMatrix of shape {tuple(self.shape)}")
        at = next((i for i, entry in enumerate(idx) if entry is Ellipsis), None)
        if at is not None:
            idx = idx[:at] + (slice(None),) * (self.ndim - n_given) + idx[at + 1 :]
        # The leading entries (with any None among them) index the batch dims; what follows, the matrix dims.
        n_batch, seen, split = self.ndim - 2, 0, len(idx)
        for position, entry in enumerate(idx):
            if entry is not None:
                if seen == n_batch:
                    split = position
                    break
                seen += 1
        batch, (rows, cols) = idx[:split], (*idx[split:], slice(None), slice(None))[:2]
        if rows is None or cols is None or len(idx) - split > 2:
            raise IndexError(f"None (a new dim) can only index the leading dims of a FactoredMatrix, got {idx!r}")
        A, B = self.A[batch], self.B[batch]
        rows, cols = self._matrix_index(rows, self.ldim), self._matrix_index(cols, self.rdim)
        return FactoredMatrix(A[..., rows, :], B[..., :, cols])

    @staticmethod
    def _matrix_index(entry: Any, size: int) -> slice | Tensor:
        """A row or column index that keeps its dim: an int becomes a length-1 slice."""
        if isinstance(entry, slice):
            return entry
        if isinstance(entry, numbers.Integral) or (isinstance(entry, Tensor) and entry.ndim == 0):
            i = int(entry)
            if not -size <= i < size:
                raise IndexError(f"Index {i} is out of range for a matrix dim of size {size}")
            return slice(i % size, i % size + 1)
        entry = torch.as_tensor(entry)
        if entry.ndim != 1:
            raise IndexError(f"A FactoredMatrix row or column index must be 1-D, got shape {tuple(entry.shape)}")
        return entry

    def get_corner(self, k: int = 3) -> Float[Tensor, "..."]:
        """Top-left k x k x ... corner of the product (every dim, batch dims included, cut to k),
        computed from the sliced factors."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(None, k) for _ in range(corner.ndim))]

    def collapse_l(self) -> Float[Tensor, "... k rdim"]:
        """S V^T, so that U @ collapse_l() == AB: the product with its left orthogonal factor removed."""
        return self.S[..., :, None] * self.V.mH

    def collapse_r(self) -> Float[Tensor, "... ldim k"]:
        """U S, so that collapse_r() @ V^T == AB: the product with its right orthogonal factor removed."""
        return self.U * self.S[..., None, :]

    @property
    def has_leading_dims(self) -> bool:
        """Whether the factors have batch dims before the matrix dims (TransformerLens's flag)."""
        return self.A.ndim > 2

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """Insert a size-1 batch dim at position k (negative k counts as in Tensor.unsqueeze)."""
        pos = k if k >= 0 else k + self.ndim + 1
        if not 0 <= pos <= self.ndim - 2:
            raise ValueError(f"unsqueeze({k}) must insert a leading dim, before the last two of {self.ndim}")
        return FactoredMatrix(self.A.unsqueeze(pos), self.B.unsqueeze(pos))

    def make_even(self) -> FactoredMatrix:
        """The same product as A' B' with A' = U sqrt(S) and B' = sqrt(S) V^T (balanced factors)."""
        root = self.S.sqrt()
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * self.V.mH)

    def __repr__(self) -> str:
        return (
            f"FactoredMatrix(shape={tuple(self.shape)}, ldim={self.ldim}, mdim={self.mdim}, "
            f"rdim={self.rdim}, dtype={self.A.dtype})"
        )
