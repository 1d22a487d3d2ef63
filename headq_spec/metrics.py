"""Names of the per-head metrics (METHOD.md), in the order every table shows them."""

HEAD_METRICS = ("key_mse", "score_mse", "fisher", "attn_kl", "entropy", "route_flip",
                "value_mse", "value_a2", "readout_err")
