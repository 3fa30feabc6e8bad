"""The three spaces an edit moves, and how metric names spell them.

    xT   x_T, the Gaussian noise a deterministic DDIM path starts from: supervised edits shift it
         (then put it back on its sphere) and decode the whole path again
    xt   x_t, the path's point at timestep t: pullback directions move it, and DDIM decodes from t
    h    the U-Net encoder's output (down path and middle block) at each DDIM step: an edit adds
         its shift to h at every step from t (or h_min_t) down, Asyrp-style

So `edit_xT_precision` is a supervised edit of the starting noise, `pullback_xt_purity` an edit of
a path's point at t, and `linear_h_linearity` or `pullback_h_purity` edits of h.
"""
X_T, X_t, H = "xT", "xt", "h"
