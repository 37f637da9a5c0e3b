"""The largest frame an AV1 stream may code, from its sequence header (AV1 spec 5.5), read
without decoding.

An AVIF declares its image size in an `ispe` box; libavif decodes the AV1 frame at the size the
stream codes, whatever `ispe` says (libheif refuses such a HEIC; libavif does not). So a file of
a few hundred bytes can declare 64x64 and decode 16384x16384. `max_frame_size` is the bound the
stream itself sets, for common/images/heif_items.py to hold against the declared size.
"""

from __future__ import annotations

OBU_SEQUENCE_HEADER = 1
MAX_OBUS = 64  # OBUs walked before the sequence header: it comes first in real streams


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self.at >> 3
            if byte >= len(self.data):
                raise ValueError("the AV1 sequence header is cut off")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.at & 7))) & 1)
            self.at += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros >= 32:
                raise ValueError("an AV1 uvlc() value past 32 bits")
        return self.read(zeros) + (1 << zeros) - 1


def max_frame_size(obus: bytes) -> tuple[int, int] | None:
    """(width, height) from the first sequence header OBU in `obus` (a configOBUs field or an
    item's data); None if there is none; ValueError if it is malformed."""
    at = 0
    for _ in range(MAX_OBUS):
        if at >= len(obus):
            return None
        header = obus[at]
        kind, extension, sized = (header >> 3) & 0x0F, header & 0x04, header & 0x02
        at += 2 if extension else 1
        if not sized:  # the rest of the data is this OBU
            size, at = len(obus) - at, at
        else:
            size, at = _leb128(obus, at)
        if kind == OBU_SEQUENCE_HEADER:
            return _frame_size(obus[at : at + size])
        at += size
    return None


def _leb128(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for index in range(8):
        if at + index >= len(data):
            raise ValueError("an AV1 OBU size is cut off")
        byte = data[at + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, at + index + 1
    raise ValueError("an AV1 OBU size past 8 bytes")


def _frame_size(payload: bytes) -> tuple[int, int]:
    bits = _Bits(payload)
    bits.read(3)  # seq_profile
    bits.read(1)  # still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.read(5)  # seq_level_idx[0]
    else:
        _operating_points(bits)
    width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1


def _operating_points(bits: _Bits) -> None:
    decoder_model, delay_length = False, 0
    if bits.read(1):  # timing_info_present_flag
        bits.read(32)  # num_units_in_display_tick
        bits.read(32)  # time_scale
        if bits.read(1):  # equal_picture_interval
            bits.uvlc()
        decoder_model = bool(bits.read(1))
        if decoder_model:
            delay_length = bits.read(5) + 1
            bits.read(32)  # num_units_in_decoding_tick
            bits.read(5)  # buffer_removal_time_length_minus_1
            bits.read(5)  # frame_presentation_time_length_minus_1
    initial_display_delay = bits.read(1)
    for _ in range(bits.read(5) + 1):  # operating points
        bits.read(12)  # operating_point_idc
        if bits.read(5) > 7:  # seq_level_idx
            bits.read(1)  # seq_tier
        if decoder_model and bits.read(1):
            bits.read(delay_length)  # decoder_buffer_delay
            bits.read(delay_length)  # encoder_buffer_delay
            bits.read(1)  # low_delay_mode_flag
        if initial_display_delay and bits.read(1):
            bits.read(4)  # initial_display_delay_minus_1
