"""FactoredMatrix checked against the product materialized with plain torch."""

import pytest
import torch

from hooked.factored_matrix import FactoredMatrix

DTYPE = torch.float64
SHAPES = [(5, 3, 7), (3, 5, 7), (7, 5, 3), (4, 4, 4), (6, 8, 2), (2, 8, 6)]  # (l, m, r)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, dtype=DTYPE)


def close(actual, expected, atol=1e-10):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-8)


def assert_same_multiset(actual, expected, atol=1e-8):
    """Complex values equal as multisets, whatever order each side lists them in."""
    actual, expected = list(actual.tolist()), list(expected.tolist())
    assert len(actual) == len(expected), (actual, expected)
    for value in expected:
        best = min(range(len(actual)), key=lambda i: abs(actual[i] - value))
        assert abs(actual[best] - value) < atol, (value, actual)
        actual.pop(best)


def nonzero(values, tol=1e-8):
    return values[values.abs() > tol]


# --- construction and basic properties -------------------------------------------------------------


def test_dims_shape_pair_and_repr():
    A, B = rand(5, 3), rand(3, 7)
    fm = FactoredMatrix(A, B)
    assert (fm.ldim, fm.mdim, fm.rdim) == (5, 3, 7)
    assert fm.shape == torch.Size([5, 7]) and isinstance(fm.shape, torch.Size)
    assert fm.ndim == 2
    assert fm.pair[0] is fm.A and fm.pair[1] is fm.B
    close(fm.A, A)
    close(fm.B, B)
    text = repr(fm)
    assert text.startswith("FactoredMatrix(") and "(5, 7)" in text and "mdim=3" in text


def test_mismatched_inner_dims_raise_clearly():
    with pytest.raises(ValueError, match="inner dims"):
        FactoredMatrix(rand(5, 3), rand(4, 7))
    with pytest.raises(ValueError, match="at least 2 dims"):
        FactoredMatrix(rand(5), rand(5, 7))
    fm = FactoredMatrix(rand(5, 3), rand(3, 7))
    with pytest.raises(ValueError, match="Cannot multiply"):
        fm @ rand(5, 2)
    with pytest.raises(ValueError, match="Cannot multiply"):
        rand(2, 7) @ fm
    with pytest.raises(ValueError, match="Cannot multiply"):
        fm @ rand(5)
    with pytest.raises(ValueError, match="Cannot multiply"):
        fm @ FactoredMatrix(rand(5, 2), rand(2, 3))


def test_broadcast_leading_dims():
    A, B = rand(2, 3, 5, 4), rand(4, 6)
    fm = FactoredMatrix(A, B)
    assert fm.shape == torch.Size([2, 3, 5, 6]) and fm.ndim == 4
    assert fm.A.shape == (2, 3, 5, 4) and fm.B.shape == (2, 3, 4, 6)
    close(fm.AB, A @ B)
    fm2 = FactoredMatrix(rand(5, 4), rand(3, 1, 4, 6))
    assert fm2.shape == torch.Size([3, 1, 5, 6])
    fm3 = FactoredMatrix(rand(2, 1, 5, 4), rand(3, 4, 6))
    assert fm3.shape == torch.Size([2, 3, 5, 6])
    close(fm3.AB, fm3.A @ fm3.B)


def test_AB_BA_and_T():
    A, B = rand(6, 3), rand(3, 6)
    fm = FactoredMatrix(A, B)
    close(fm.AB, A @ B)
    close(fm.BA, B @ A)
    assert fm.BA.shape == (3, 3)
    close(fm.T.AB, (A @ B).T)
    assert fm.T.shape == (6, 6) and fm.T.mdim == 3
    rect = FactoredMatrix(rand(2, 5, 3), rand(3, 7))
    close(rect.T.AB, (rect.A @ rect.B).transpose(-1, -2))
    with pytest.raises(ValueError, match="square"):
        rect.BA


def test_scalar_multiplication_both_sides():
    A, B = rand(5, 3), rand(3, 7)
    fm = FactoredMatrix(A, B)
    for result in (fm * 2.5, 2.5 * fm, fm * torch.tensor(2.5, dtype=DTYPE), torch.tensor(2.5, dtype=DTYPE) * fm):
        assert isinstance(result, FactoredMatrix)
        close(result.AB, 2.5 * (A @ B))
    close((fm * -1).AB, -(A @ B))
    with pytest.raises(TypeError, match="scalar"):
        fm * rand(7)


# --- products --------------------------------------------------------------------------------------


@pytest.mark.parametrize("l,m,r", SHAPES)
def test_matmul_with_matrix_on_either_side(l, m, r):
    A, B = rand(l, m), rand(m, r)
    fm, AB = FactoredMatrix(A, B), A @ B
    right, left = rand(r, 4), rand(9, l)

    out = fm @ right
    assert isinstance(out, FactoredMatrix)
    close(out.AB, AB @ right)
    assert out.mdim == min(m, r)

    out = left @ fm
    assert isinstance(out, FactoredMatrix)
    close(out.AB, left @ AB)
    assert out.mdim == min(m, l)


@pytest.mark.parametrize("l,m,r", SHAPES)
def test_matmul_with_vector_gives_plain_tensor(l, m, r):
    A, B = rand(l, m), rand(m, r)
    fm, AB = FactoredMatrix(A, B), A @ B
    v_right, v_left = rand(r), rand(l)
    out = fm @ v_right
    assert type(out) is torch.Tensor
    close(out, AB @ v_right)
    out = v_left @ fm
    assert type(out) is torch.Tensor
    close(out, v_left @ AB)


@pytest.mark.parametrize("m1,r1,m2", [(3, 6, 4), (6, 3, 4), (6, 5, 2), (2, 8, 9)])
def test_matmul_two_factored_matrices(m1, r1, m2):
    f1 = FactoredMatrix(rand(5, m1), rand(m1, r1))
    f2 = FactoredMatrix(rand(r1, m2), rand(m2, 7))
    out = f1 @ f2
    assert isinstance(out, FactoredMatrix)
    close(out.AB, f1.AB @ f2.AB)
    assert out.shape == (5, 7)
    assert out.mdim == min(m1, r1, m2)


def test_batched_products():
    fm = FactoredMatrix(rand(2, 3, 5, 4), rand(4, 6))
    AB = fm.A @ fm.B
    X = rand(3, 6, 2)
    close((fm @ X).AB, AB @ X)
    Y = rand(2, 1, 7, 5)
    close((Y @ fm).AB, Y @ AB)
    v = rand(6)
    close(fm @ v, AB @ v)
    w = rand(5)
    close(w @ fm, w @ AB)
    other = FactoredMatrix(rand(6, 2), rand(3, 2, 4))
    close((fm @ other).AB, AB @ other.AB)


# --- decompositions --------------------------------------------------------------------------------


@pytest.mark.parametrize("l,m,r", SHAPES)
def test_svd_reconstructs_and_matches_svdvals(l, m, r):
    """TransformerLens's convention: svd() is (U, S, V) with AB = U diag(S) V^T, and .Vh is that same V."""
    fm = FactoredMatrix(rand(l, m), rand(m, r))
    AB = fm.A @ fm.B
    U, S, V = fm.svd()
    k = min(l, m, r)
    assert U.shape == (l, k) and S.shape == (k,) and V.shape == (r, k)
    close(U @ torch.diag(S) @ V.T, AB)
    close(S, torch.linalg.svdvals(AB)[:k])
    close(U.T @ U, torch.eye(k, dtype=DTYPE))
    close(V.T @ V, torch.eye(k, dtype=DTYPE))
    assert torch.all(S[:-1] >= S[1:])
    assert fm.U is U and fm.S is S and fm.V is V and fm.Vh is V


def test_vh_of_a_square_circuit_is_v_not_its_transpose():
    """On a square product (an OV circuit) V and V^T have the same shape: code written for TransformerLens
    reads fm.Vh[:, i] as the i-th right singular vector, which it must be here too."""
    fm = FactoredMatrix(rand(6, 3), rand(3, 6))
    _, _, torch_vh = torch.linalg.svd(fm.A @ fm.B)
    for i in range(3):  # singular vectors are defined up to sign
        column = fm.Vh[:, i]
        close(column * torch.sign(column @ torch_vh[i]), torch_vh[i])


def test_svd_is_cached_and_only_decomposes_a_small_core(monkeypatch):
    fm = FactoredMatrix(rand(50, 4), rand(4, 60))
    seen = []
    real_svd = torch.linalg.svd

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real_svd(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", spy)
    first = fm.svd()
    assert fm.svd() is first
    fm.U, fm.S, fm.V, fm.Vh
    assert seen == [(4, 4)]


def test_svd_batched_broadcast():
    fm = FactoredMatrix(rand(2, 3, 5, 4), rand(4, 6))
    AB = fm.A @ fm.B
    U, S, V = fm.svd()
    assert U.shape == (2, 3, 5, 4) and S.shape == (2, 3, 4) and V.shape == (2, 3, 6, 4)
    close(U @ torch.diag_embed(S) @ V.mT, AB)
    close(S, torch.linalg.svdvals(AB)[..., :4])


@pytest.mark.parametrize("l,m", [(6, 3), (3, 5), (4, 4)])
def test_eigenvalues_are_the_nonzero_eigenvalues_of_the_product(l, m):
    fm = FactoredMatrix(rand(l, m), rand(m, l))
    eig = fm.eigenvalues
    assert eig.shape == (m,) and eig.is_complex()
    expected = nonzero(torch.linalg.eigvals(fm.A @ fm.B))
    assert len(expected) == min(l, m)
    assert_same_multiset(nonzero(eig), expected)


def test_eigenvalues_batched_and_non_square_error():
    fm = FactoredMatrix(rand(2, 6, 3), rand(3, 6))
    eig, full = fm.eigenvalues, torch.linalg.eigvals(fm.A @ fm.B)
    assert eig.shape == (2, 3)
    for i in range(2):
        assert_same_multiset(nonzero(eig[i]), nonzero(full[i]))
    with pytest.raises(ValueError, match="square"):
        FactoredMatrix(rand(5, 3), rand(3, 7)).eigenvalues


def test_norm_is_frobenius_norm():
    fm = FactoredMatrix(rand(5, 3), rand(3, 7))
    close(fm.norm(), torch.linalg.norm(fm.A @ fm.B))
    batched = FactoredMatrix(rand(2, 3, 5, 4), rand(4, 6))
    close(batched.norm(), torch.linalg.matrix_norm(batched.A @ batched.B, "fro"))


@pytest.mark.parametrize("l,m,r", SHAPES)
def test_collapse_l_and_r(l, m, r):
    fm = FactoredMatrix(rand(l, m), rand(m, r))
    AB, k = fm.A @ fm.B, min(l, m, r)
    assert fm.collapse_l().shape == (k, r) and fm.collapse_r().shape == (l, k)
    close(fm.U @ fm.collapse_l(), AB)
    close(fm.collapse_r() @ fm.V.T, AB)
    close(fm.collapse_l(), torch.diag(fm.S) @ fm.V.T)
    close(fm.collapse_r(), fm.U @ torch.diag(fm.S))


def test_has_leading_dims():
    assert not FactoredMatrix(rand(5, 3), rand(3, 4)).has_leading_dims
    assert FactoredMatrix(rand(2, 5, 3), rand(3, 4)).has_leading_dims
    assert FactoredMatrix(rand(5, 3), rand(2, 3, 4)).has_leading_dims


def test_a_one_element_tensor_scales_like_a_number():
    fm = FactoredMatrix(rand(5, 3), rand(3, 4))
    scaled = fm * torch.tensor([2.5], dtype=DTYPE)
    close(scaled.AB, 2.5 * (fm.A @ fm.B))
    assert scaled.shape == fm.shape
    with pytest.raises(TypeError, match="one-element tensor"):
        fm * torch.ones(4, dtype=DTYPE)


def test_eigenvalues_of_bfloat16_factors():
    A, B = rand(6, 3).bfloat16(), rand(3, 6).bfloat16()
    eig = FactoredMatrix(A, B).eigenvalues  # torch.linalg.eigvals itself refuses bfloat16
    torch.testing.assert_close(eig, torch.linalg.eigvals((B @ A).float()))


def test_make_even_keeps_product_and_balances_factors():
    fm = FactoredMatrix(rand(2, 6, 4) * 10, rand(4, 5) / 10)
    even = fm.make_even()
    assert isinstance(even, FactoredMatrix) and even.shape == fm.shape
    close(even.AB, fm.A @ fm.B)
    diag_S = torch.diag_embed(fm.S)
    close(even.A.mT @ even.A, diag_S)
    close(even.B @ even.B.mT, diag_S)


# --- indexing and reshaping ------------------------------------------------------------------------


def test_indexing_leading_dims():
    fm = FactoredMatrix(rand(4, 3, 5, 2), rand(2, 6))
    AB = fm.A @ fm.B
    # (index on the FactoredMatrix, the same selection written on the materialized product)
    cases = [
        (0, 0),
        (slice(1, 3), slice(1, 3)),
        ((0, 2), (0, 2)),
        ((slice(None), 1), (slice(None), 1)),
        ((1, ...), (1, ...)),
        (torch.tensor([3, 0]), torch.tensor([3, 0])),
        ((torch.tensor([3, 0]), torch.tensor([1, 1])), (torch.tensor([3, 0]), torch.tensor([1, 1]))),
        (None, None),
        ((0, None), (0, None)),
    ]
    for idx, product_idx in cases:
        sub = fm[idx]
        assert isinstance(sub, FactoredMatrix)
        close(sub.AB, AB[product_idx])
    assert fm[0].shape == (3, 5, 6)
    assert fm[1:3].shape == (2, 3, 5, 6)
    assert fm[0, 2].shape == (5, 6)


def test_indexing_rows_and_columns_matches_the_product():
    """Rows index A, columns index B; an int keeps its dim (the result stays a matrix), and two index
    tensors select rows and columns independently (TransformerLens's FactoredMatrix.__getitem__)."""
    fm = FactoredMatrix(rand(4, 3, 5, 2), rand(2, 6))
    AB = fm.A @ fm.B
    rows, cols = torch.tensor([4, 0, 2, 0]), torch.tensor([5, 1])
    mask = torch.tensor([True, False, True, True, False])
    cases = [
        ((0, 1, rows), AB[0, 1][rows]),
        ((0, 1, slice(None), slice(None, 3)), AB[0, 1, :, :3]),
        ((0, 1, rows, cols), AB[0, 1][rows][:, cols]),
        ((0, 1, 2), AB[0, 1, 2:3]),
        ((0, 1, -1, -1), AB[0, 1, -1:, -1:]),
        ((0, 1, [1, 3], 2), AB[0, 1, [1, 3], 2:3]),
        ((0, 1, mask), AB[0, 1, mask]),
        ((slice(None), 2, slice(1, 4)), AB[:, 2, 1:4]),
        ((..., cols), AB[..., cols]),
        ((..., 2, slice(None)), AB[..., 2:3, :]),
        ((1, ..., rows, 0), AB[1][..., rows, :][..., 0:1]),
        ((torch.tensor([3, 0]), torch.tensor([1, 1]), rows), AB[[3, 0], [1, 1]][:, rows]),
    ]
    for idx, expected in cases:
        sub = fm[idx]
        assert isinstance(sub, FactoredMatrix), idx
        close(sub.AB, expected)
    # The ARENA use: a sample of rows and columns of a 2-D circuit, still factored until .AB.
    full_OV = FactoredMatrix(rand(50, 4), rand(4, 60))
    indices = torch.randint(0, 50, (20,))
    sample = full_OV[indices, indices]
    assert sample.shape == (20, 20) and sample.mdim == 4
    close(sample.AB, full_OV.AB[indices][:, indices])
    close(full_OV[indices].AB, full_OV.AB[indices])
    close(full_OV[:, :10].AB, full_OV.AB[:, :10])


def test_indexing_errors_are_index_errors():
    fm = FactoredMatrix(rand(4, 3, 5, 2), rand(2, 6))
    for bad in [
        (0, 0, 0, 0, 0),
        (0, 0, 5),
        (0, 0, 0, -7),
        (..., 0, ...),
        (0, 0, torch.tensor([[0, 1]])),
        (0, 0, 0, None),
    ]:
        with pytest.raises(IndexError):
            fm[bad]


def test_get_corner():
    fm = FactoredMatrix(rand(8, 3), rand(3, 9))
    AB = fm.A @ fm.B
    close(fm.get_corner(), AB[:3, :3])
    close(fm.get_corner(5), AB[:5, :5])
    close(fm.get_corner(20), AB)
    batched = FactoredMatrix(rand(5, 8, 3), rand(3, 9))
    close(batched.get_corner(2), (batched.A @ batched.B)[:2, :2, :2])


def test_unsqueeze():
    fm = FactoredMatrix(rand(3, 5, 2), rand(2, 6))
    AB = fm.A @ fm.B
    for k, shape in [(0, (1, 3, 5, 6)), (1, (3, 1, 5, 6)), (-3, (3, 1, 5, 6)), (-4, (1, 3, 5, 6))]:
        out = fm.unsqueeze(k)
        assert out.shape == shape
        close(out.AB, AB.unsqueeze(k))
    for bad in (2, 3, -1, -2):
        with pytest.raises(ValueError, match="leading dim"):
            fm.unsqueeze(bad)
