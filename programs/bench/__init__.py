"""``lpemu bench``: the speed suite, with ratios against baselines measured in the same run."""
