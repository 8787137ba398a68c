"""Harmonizers of template-space T1w images, and the slicing/intensity helpers they share.

Each learns the reference site's appearance from an :class:`~bidsharmony.harmonize.image_base.ImageSet`
and follows :class:`bidsharmony.harmonize.image_base.ImageHarmonizer`; build one by name with
:func:`bidsharmony.harmonize.image_base.get_image_harmonizer` (the names are declared in
:mod:`bidsharmony.harmonize.registry`).

======================  =================================================  ======================
method                  class                                              module
======================  =================================================  ======================
``histogram-matching``  :class:`~.histogram.HistogramMatching`             :mod:`.histogram`
``harmonizing-flows``   :class:`~.harmonizing_flows.HarmonizingFlows`      :mod:`.harmonizing_flows`
``blindharmony``        :class:`~.blindharmony.BlindHarmony`               :mod:`.blindharmony`
``deepscm-image``       :class:`~.deepscm_image.DeepSCMImage`              :mod:`.deepscm_image`
======================  =================================================  ======================

:mod:`.data` cuts scans into brain-centred 2D slices and normalises their intensities. The
flow layers (Glow, couplings, U-Nets) are in :mod:`bidsharmony.flows`; deep SCM reuses the
causal-model engine of :mod:`bidsharmony.scm`. Nothing is imported here (torch is
imported by the methods that need it).
"""
