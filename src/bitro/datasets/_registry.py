"""Public datasets that bitro can fetch: where each file lives upstream and its sha256.

Downloads go through pooch into ``bt.settings.cachedir`` and are verified against these
checksums; a file that is already there is never fetched again, so everything works offline
once cached (or with ``data_dir=`` pointing at a local copy).
"""

from __future__ import annotations

_HER2ST_COMMIT = "85df7411b987a7dec3feff9718b869a7a82091ec"
HER2ST_URL = f"https://github.com/almaan/her2st/raw/{_HER2ST_COMMIT}/data/"
"""HER2+ breast cancer legacy ST (Andersson et al., Nat. Commun. 12, 6012, 2021; CC BY 4.0)."""

# section -> (image file name upstream, sha256 of counts, spot file, image); checksums of the
# files as published at the commit above (patient C, the sections bitro's tests and model use)
HER2ST_FILES: dict[str, tuple[str, str, str, str]] = {
    "C2": (
        "5714_HE_BT_C2.jpg",
        "c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d",
        "235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c",
        "26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e",
    ),
    "C3": (
        "5714_HE_BT_D1.jpg",
        "e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a",
        "7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755",
        "0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568",
    ),
    "C4": (
        "5714_HE_BT_D2.jpg",
        "33201f76d41d7131dc600a0f87d9a70383af3503e81698b4d11e6f2e8d73e9da",
        "47e79f3b9dbfa3a8c18af9e948ba7ba4bf0a75ea1b4c292bc714ced7d0917d4c",
        "f40607eb1d5f0d125decd71c48b0c5d29cf6776ad92297fd185631208c82d6f2",
    ),
    "C5": (
        "5714_HE_BT_E1.jpg",
        "c0f310315ca6110d74dbdf7011e5b42432ba0b8eb5f001824764911988f39338",
        "2114cc3b4da759772112897f1e247d5443c9f8c808e6a9a952eb4fda379a194c",
        "34028ea41e376396b50c42b0a11a7e689c85be4a8022e668d0a09cc128c04c65",
    ),
}

DOWNLOAD_TIMEOUT_S = 60
"""Seconds a download may stall before it fails (never hang without a network)."""
