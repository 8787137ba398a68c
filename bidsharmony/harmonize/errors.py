"""Errors and warnings raised by the harmonizers.

Every error is a :class:`~bidsharmony.errors.BidsharmonyError`, so the command line turns it
into one clear line and an exit code; the message names what is wrong and how to fix it.
Warnings are plain :class:`UserWarning` subclasses so callers can filter them by category.
"""

from __future__ import annotations

from ..errors import BidsharmonyError, InputDataError, UsageError


class HarmonizerError(BidsharmonyError):
    """Base class of the errors raised by :mod:`bidsharmony.harmonize`."""


class CovariateError(HarmonizerError, InputDataError):
    """The covariate table cannot be used (missing column, unknown sex code, bad age...)."""


class FeatureError(HarmonizerError, InputDataError):
    """The feature table cannot be used (NaN, non-numeric, non-positive volumes...)."""


class HarmonizerInputError(HarmonizerError, InputDataError):
    """The images, masks or covariates given to an image harmonizer cannot be used."""


class NonPositiveOutputError(FeatureError):
    """A harmonizer's output would hold a volume <= 0; it is refused rather than written."""


class FeatureMismatchError(FeatureError):
    """The features given to ``transform`` differ from those the model was fitted on."""


class UnknownSiteError(CovariateError):
    """A site not seen in ``fit`` was given to ``transform``."""


class NotEnoughSubjectsError(CovariateError):
    """A site has fewer subjects than the configured minimum."""


class CovariateRangeError(CovariateError):
    """A covariate lies outside the fitted range and the harmonizer was told not to clamp it."""


class ModelFileError(HarmonizerError, InputDataError):
    """A saved model folder is missing, corrupted, or written by a newer bidsharmony."""


class NotFittedError(HarmonizerError):
    """A harmonizer was used before ``fit`` (or ``load``)."""


class TrainingError(HarmonizerError):
    """Training of a learned harmonizer diverged (non-finite loss)."""


class HarmonizerParameterError(HarmonizerError, UsageError):
    """A harmonizer was constructed with an invalid parameter."""


class CovariateOverlapWarning(UserWarning):
    """Covariate support differs between sites, so harmonization must extrapolate."""


class CovariateRangeWarning(UserWarning):
    """Covariates given to ``transform`` lie outside the range seen in ``fit``."""


class FeatureOutlierWarning(UserWarning):
    """A scan's feature lies far outside its site's distribution (a likely segmentation or
    brain-mask failure); it is harmonized, and fitted, like any other scan."""
