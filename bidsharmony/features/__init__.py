"""Harmonizers of feature tables (ROI volumes or any table of numbers per scan).

Each takes a feature table and a covariate table (``site``, ``age``, ``sex``) and follows the
interface of :class:`bidsharmony.harmonize.base.Harmonizer`; build one by name with
:func:`bidsharmony.harmonize.get_harmonizer` (the names are declared in
:mod:`bidsharmony.harmonize.registry`).

=======================  =================================================  =====================
method                   class                                              module
=======================  =================================================  =====================
``combat``               :class:`~.combat.ComBat`                           :mod:`.combat`
``combat-gam``           :class:`~.combat.ComBatGAM`                        :mod:`.combat`
``combat-ls``            :class:`~.combat_ls.ComBatLS`                      :mod:`.combat_ls`
``covbat``               :class:`~.covbat.CovBat`                           :mod:`.covbat`
``equivariant-pooling``  :class:`~.pooling.harmonizer.EquivariantPooling`   :mod:`.pooling`
``flow-scm``             :class:`~.flow_scm.FlowSCMHarmonizer`              :mod:`.flow_scm`
=======================  =================================================  =====================

Nothing is imported here: the ComBat family needs neuroHarmonize, flow-scm and pooling torch,
and each is imported only when used. flow-scm's causal-model engine (graph, mechanisms,
abduction–action–prediction) is :mod:`bidsharmony.scm`, shared with the deep-SCM image method.
"""
