// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title TranscriptRecords
/// @notice Reads which answer a host-signed transcript record names: its session and its
/// `start` (the session's billable tokens before the answer). A record is the deterministic
/// CBOR map the SDK writes (`fabstir_sdk.transcripts.TranscriptRecord.encode`, version 1): its
/// keys are sorted by their encoded bytes, so `v`, `prev`, `text`, `model`, `start`, `finish`
/// and `session` come before the nested values (`sampling`, the token id arrays), and the
/// reader stops before reaching those.
library TranscriptRecords {
    uint256 private constant RECORD_VERSION = 1;
    uint8 private constant UINT = 0;
    uint8 private constant BYTES = 2;
    uint8 private constant TEXT = 3;
    uint8 private constant MAP = 5;
    uint8 private constant SIMPLE = 7;

    error MalformedRecord();

    /// @notice The session and the `start` that record `record` names.
    /// @param record a version-1 transcript record, CBOR-encoded
    /// @return session the record's session id
    /// @return start the session's billable tokens before the answer: names it in the session
    // One branch per key and CBOR item type the walk meets; splitting it would hide the format.
    // slither-disable-next-line cyclomatic-complexity
    function answerOf(bytes calldata record) internal pure returns (uint256 session, uint256 start) {
        (uint8 major, uint256 entries, uint256 pos) = _head(record, 0);
        if (major != MAP) revert MalformedRecord();
        bool versioned = false;
        bool hasSession = false;
        bool hasStart = false;
        for (uint256 i; i < entries && !(hasSession && hasStart); ++i) {
            uint256 length;
            (major, length, pos) = _head(record, pos);
            if (major != TEXT || pos + length > record.length) revert MalformedRecord();
            bytes32 key = keccak256(record[pos:pos + length]);
            pos += length;
            uint256 value;
            (major, value, pos) = _head(record, pos);
            if (key == keccak256("v")) {
                if (major != UINT || value != RECORD_VERSION) revert MalformedRecord();
                versioned = true;
            } else if (key == keccak256("session")) {
                if (major != UINT) revert MalformedRecord();
                (session, hasSession) = (value, true);
            } else if (key == keccak256("start")) {
                if (major != UINT) revert MalformedRecord();
                (start, hasStart) = (value, true);
            } else if (major == BYTES || major == TEXT) {
                pos += value;
            } else if (major != UINT && major != SIMPLE) {
                revert MalformedRecord(); // a nested value before the answer's names
            }
        }
        if (!versioned || !hasSession || !hasStart) revert MalformedRecord();
    }

    /// @dev A CBOR item's head at `pos`: its major type, its argument (a value, or a length)
    /// and where its content starts.
    function _head(bytes calldata data, uint256 pos) private pure returns (uint8 major, uint256 arg, uint256 next) {
        if (pos >= data.length) revert MalformedRecord();
        uint8 initial = uint8(data[pos]);
        major = initial >> 5;
        uint8 info = initial & 31;
        next = pos + 1;
        if (info < 24) return (major, info, next);
        if (info > 27) revert MalformedRecord(); // indefinite lengths and reserved values
        uint256 size = 1 << (info - 24); // 1, 2, 4 or 8 bytes
        if (next + size > data.length) revert MalformedRecord();
        arg = uint256(bytes32(data[next:next + size])) >> (256 - 8 * size);
        next += size;
    }
}
