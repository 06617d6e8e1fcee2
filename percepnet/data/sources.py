"""The corpus sources: Debian packages fetched, their licences, what is taken from them."""

from __future__ import annotations

import re

ASTERISK_LANGS = ("en", "es", "fr", "it", "ru")
DEBIAN_PACKAGES = (
    "tuxpaint-stamps-default",
    "klettres-data",
    "hedgewars-data",
    "megaglest-data",
    *(f"asterisk-core-sounds-{lang}-g722" for lang in ASTERISK_LANGS),
    "kajongg",
    "redeclipse-data",
    "0ad-data",
    "openttd-opensfx",
)
"""Fetched in this order. Licences (Debian copyright files): tuxpaint, klettres,
hedgewars, megaglest, kajongg GPL-2+; asterisk prompts CC BY-SA 3.0 (en, es, fr) and
CC BY 3.0 (it, ru); redeclipse ambience and 0ad audio CC BY-SA 3.0 / CC BY 3.0;
OpenSFX sounds CC BY-SA 3.0 as a set, each source recording CC BY 3.0, CC BY-SA 3.0 or
CC0 (named in the catalogue, kept in credits.txt beside the files)."""

SOURCE_LICENCES = {
    "picovoice_sti": "Apache-2.0",
    "picovoice_ww": "Apache-2.0",
    "ljspeech": "public domain",
    "dns_8k": "CC BY 4.0",
    "librispeech": "CC BY 4.0",
    "tuxpaint": "GPL-2+",
    "tuxpaint_fx": "GPL-2+",
    "klettres": "GPL-2+",
    "hedgewars": "GPL-2+",
    "hedgewars_sounds": "GPL-2+",
    "hedgewars_music": "GPL-2+",
    "megaglest": "CC BY-SA 3.0",
    "asterisk_en": "CC BY-SA 3.0",
    "asterisk_es": "CC BY-SA 3.0",
    "asterisk_fr": "CC BY-SA 3.0",
    "asterisk_it": "CC BY 3.0",
    "asterisk_ru": "CC BY 3.0",
    "kajongg": "GPL-2+",
    "redeclipse_ambience": "CC BY-SA 3.0 / CC BY 3.0",
    "0ad_voice": "CC BY-SA 3.0",
    "0ad_ambient": "CC BY-SA 3.0",
    "opensfx": "CC BY-SA 3.0",
}
"""Licence of each source, for the manifest and the model card (shared sources: see
the shared folder's README; per-file licences of librosa examples sit beside them)."""

PARTIAL_MEMBERS = {
    "redeclipse-data": ("./usr/share/games/redeclipse/data/sounds/ambience/*.ogg",),
    "0ad-data": ("*/mods/public/public.zip",),
}
"""Large packages: only these members are unpacked (tar wildcards)."""
ZIP_MEMBERS = ("audio/voice/", "audio/ambient/")
"""0ad-data keeps its audio inside public.zip: only these folders are taken out."""
ASTERISK_SKIP = re.compile(r"beep|tone|dtmf|silence|^digits/|^letters/|^phonetic/")
"""Asterisk files that are not sentences: beeps, tones, DTMF, silence, and the single
digits/letters (too short to train on, and one speaker's many near-identical clips)."""

OPENSFX_KEEP = re.compile(
    r"train|engine|steam|diesel|maglev|monorail|plane|jet|helicopter|truck|bus start|"
    r"machinery|sparking|jackhammer|sawmill|chainsaw|applause|wind|factory \(3\)"
)
"""OpenSFX (OpenTTD's sound set) sounds taken as noise, by their catalogue name: recorded
trains, aircraft, road vehicles, machines, wind and a crowd. Jingles, beeps, animals,
crashes and the comedy variants are left out. Horns stay where a vehicle runs under them."""
OPENSFX_SKIP = re.compile(r"comedy|toyland: (?!toy factory \(3\))|breakdown|horn\b")

AUDIO_EXTENSIONS = (".flac", ".ogg", ".wav")
