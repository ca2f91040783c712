"""INT8 calibration: calibration sets, Q/DQ quantisation with a range cache, and an accuracy report.

Depends on engines only (never on stream/): callers hand in crops or image folders and mapping functions.
"""
from calibration.datasets import crops_to_feeds, fingerprint_feeds, load_crop_folder, materialise, wplus_feeds
from calibration.quantize import CalibrationMethod, QuantizeResult, quantize_qdq
from calibration.report import ReportRow, compare_precisions, format_report, psnr, relative_l2

__all__ = ["CalibrationMethod", "QuantizeResult", "ReportRow", "compare_precisions", "crops_to_feeds",
           "fingerprint_feeds", "format_report", "load_crop_folder", "materialise", "psnr", "quantize_qdq",
           "relative_l2", "wplus_feeds"]
