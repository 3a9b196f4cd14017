"""Real video in: clips decoded with PyAV for distillation and calibration, and the metrics (PSNR, SSIM) that score reconstructions."""
