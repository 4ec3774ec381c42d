"""Running a model over an evaluation split, and what an evaluation writes: results, figures."""
