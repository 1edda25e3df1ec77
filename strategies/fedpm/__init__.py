"""FedPM: federated probabilistic masks over frozen random weights (Isik et al., ICLR 2023).

Server and clients rebuild the same frozen ±c weights from ``weight_seed``; only the mask
probabilities go down and one sampled binary mask per client comes up. The downlink carries θ as
16-bit fixed point (``downlink_dtype=uint16``, 2 bytes per parameter; float32/float16 scores
logit θ are the alternatives under packed coding). The uplink (``uplink_coding``) is the mask
range-coded against those same θ (``mask_codec``: Σ −log₂ p_g(m) bits, well below one
bit per parameter once θ polarises, with a CRC32 and per-layer fallback to packed bits) or
``packed`` with ``np.packbits`` (exactly 1 bit per parameter). The server keeps a Beta(α, β)
posterior per mask entry, reset to Beta(λ0, λ0) every ``reset_period`` rounds, adds the
ε-clipped masks and sends the mode θ = (α−1)/(α+β−2) back.

Local training: Adam on the scores with ``strategy.local_lr`` (default 0.1, the paper's); epochs
and batch size are the top-level ``local_epochs`` / ``batch_size`` (paper: 3 and 128). Documented
deviations from the authors' code: Adam state is fresh every round (as in the Flower port), the
aggregation is an unweighted count (as in the authors' code, not the port's batch-count
weighting), and the bpp entropy uses the true (unclipped) ones fraction.

Layer monitor (``server_app.monitor``): its layer view (:class:`MaskScores`) reports each
``<layer>.weight_score`` as ``<layer>.weight`` with θ = σ(score) as the watched values. It
supplies each client's Δ_c = clip(m_c, ε, 1−ε) − θ_{t−1} (its norm as the reply arrives) and
their unweighted mean (the posterior's own count), for ``layer_agg_eff``; θ_{t−1} is what the
clients received and trained from (the uint16 θ under the default downlink).

Cohort reduction (:class:`MaskCounts`): the aggregate is a count of ones per entry, so a node
hosting several clients decodes their masks (it holds the same θ) and sends the counts: exact,
and the range decoding spreads over the nodes.
"""

from strategies.core.registry import Algorithm, register_algorithm
from strategies.fedpm.client import FedPMClient
from strategies.fedpm.shared import build_fedpm_model
from strategies.fedpm.strategy import FedPM

register_algorithm(Algorithm("fedpm", FedPM, FedPMClient, model_builder=build_fedpm_model))
