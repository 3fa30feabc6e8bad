"""Edits and their scores: directions in x_T, x_t or h (`spaces`), edited and decoded, then read
by a network (`scoring`): supervised directions from labelled samples (`supervised`), the
encoder's pullback directions (`pullback`), the shapes factors that are read (`factors`), and
controls whose answer is known (`controls`)."""
