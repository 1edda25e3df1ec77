"""The pseudo-gradient family: top-k and scaled-sign compression with error feedback
(``server``, ``client``, ``compression``) and LBGM, which sends a scalar instead of a layer
while the client's look-back gradient still fits (``lbgm``, with the server's store of
look-back gradients ``lbg_store`` and the client's book of them ``lbg_book``)."""

from strategies.core.registry import Algorithm, register_algorithm
from strategies.pseudo_gradient.client import PseudoGradientClient
from strategies.pseudo_gradient.lbgm import Lbgm
from strategies.pseudo_gradient.server import SignSGD, TopK

register_algorithm(Algorithm("lbgm", Lbgm, PseudoGradientClient))
register_algorithm(Algorithm("topk", TopK, PseudoGradientClient))
register_algorithm(Algorithm("signsgd", SignSGD, PseudoGradientClient))
