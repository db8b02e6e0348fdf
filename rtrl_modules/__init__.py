"""Exact real-time recurrent learning (RTRL) for element-wise recurrent networks."""
