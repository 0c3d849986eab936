"""TAVI measurements (SCCT 2019 expert-consensus set) from landmarks, the CT and the calcification mask.

:func:`~cardiofm.measurements.report.measure_all` computes them all into a
:class:`~cardiofm.contracts.measurements.MeasurementReport`; the modules hold the pieces: ``geometry`` (annular
plane, heights, C-arm angles), ``lumen`` (cross-sections), ``calcium`` (cusp volumes, Agatston), ``io`` (inputs).
"""
