"""corrscan.match2d: 2D template matching of cryo-EM micrographs (replaces Leopard-EM).

Main entry points: :func:`match_template` (the search), :mod:`corrscan.match2d.peaks`
(Leopard-EM-compatible peak extraction, p-value and GEV metrics, particle tables),
:func:`refine_template` (local refinement), :func:`constrained_search`,
:func:`optimize_template_pixel_size`. Configuration models live in
:mod:`corrscan.match2d.config`; see ``docs/match2d.md``.
"""

from corrscan.match2d.config import (
    ComputeConfig,
    DefocusSearchConfig,
    MatchTemplateConfig,
    OpticsGroup,
    OrientationSearchConfig,
    PreprocessingFilters,
    RefineConfig,
)
from corrscan.match2d.peaks import (
    MatchTemplatePeaks,
    extract_peaks,
    extract_peaks_and_statistics_zscore,
    peaks_to_dataframe,
)
from corrscan.match2d.refine import (
    constrained_search,
    optimize_template_pixel_size,
    refine_template,
)
from corrscan.match2d.result import MatchTemplateResult
from corrscan.match2d.search import match_template

__all__ = [
    "ComputeConfig",
    "DefocusSearchConfig",
    "MatchTemplateConfig",
    "MatchTemplatePeaks",
    "MatchTemplateResult",
    "OpticsGroup",
    "OrientationSearchConfig",
    "PreprocessingFilters",
    "RefineConfig",
    "constrained_search",
    "extract_peaks",
    "extract_peaks_and_statistics_zscore",
    "match_template",
    "optimize_template_pixel_size",
    "peaks_to_dataframe",
    "refine_template",
]
