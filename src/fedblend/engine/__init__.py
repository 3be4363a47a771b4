"""The round loop and the ports it talks through."""

from fedblend.engine.federation import Federation, Sampling, Synthesizer, summarize_reports
from fedblend.engine.ports import RunStore, SitePool
from fedblend.engine.site import SiteRunner, site_seed
from fedblend.engine.validate import UpdateValidator, check_update

__all__ = [
    "Federation",
    "Sampling",
    "Synthesizer",
    "summarize_reports",
    "RunStore",
    "SitePool",
    "SiteRunner",
    "site_seed",
    "UpdateValidator",
    "check_update",
]
