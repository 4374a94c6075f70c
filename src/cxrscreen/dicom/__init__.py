"""cxrscreen as a DICOM node: screen DICOM chest X-rays and answer in DICOM, the second front door beside
:mod:`cxrscreen.serve`.

``screen`` turns one source object into its results (a TID 1500 structured report, ``sr``, and a burned-in
Grad-CAM Secondary Capture, ``sc``) through the same :class:`~cxrscreen.inference.predictor.Predictor` every
front door uses; ``select`` says what is screened; ``node`` is the Storage SCP (``cxrscreen dicom listen``) with
its ``spool`` (nothing acknowledged is lost) and its sender (``send``).
"""
