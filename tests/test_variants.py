"""The rendered variants a training adds: seeded, labelled as their source digit, and what the model sees."""

import numpy as np

from model.quality.robustness import stroke_width
from model.training.variants import make_pool, variant


def test_the_pool_is_seeded_and_keeps_each_label(mnist):
    x, y = mnist.x_train[:300], mnist.y_train[:300]
    a_x, a_y = make_pool(x, y, 200, seed=3)
    b_x, b_y = make_pool(x, y, 200, seed=3)
    np.testing.assert_array_equal(a_x, b_x)
    np.testing.assert_array_equal(a_y, b_y)
    assert a_x.shape == (200, 28, 28) and a_x.dtype == np.uint8 and set(a_y) <= set(y)
    other_x, _ = make_pool(x, y, 200, seed=4)
    assert not np.array_equal(a_x, other_x)
    assert make_pool(x, y, 0, seed=3)[0].shape == (0, 28, 28)


def test_variants_differ_from_their_digit_as_users_digits_do(mnist):
    """Each variant is decoded as production decodes a file: a 28x28 frame with ink, not MNIST's own bytes;
    across many, pens are thicker and thinner than the source's, as the suite's stroke shifts are."""
    digits = mnist.x_train[:60]
    labels = mnist.y_train[:60]
    widths, changed = [], 0
    for k, (digit, label) in enumerate(zip(digits, labels, strict=True)):
        out = variant(digit, int(label), np.random.default_rng(k))
        assert out.shape == (28, 28) and int(out.max()) - int(out.min()) > 60  # a digit, on black or on grey paper
        changed += not np.array_equal(out, digit)
        widths.append(stroke_width(out) / max(stroke_width(digit), 1e-6))
    assert changed == len(digits)
    assert min(widths) < 0.9 and max(widths) > 1.3
