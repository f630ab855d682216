// Package proto is the wire protocol between the host-side agent client and
// the guest-side agent server: frame layout and checksums, the resynchronising
// decoder, the HELLO handshake, message and method names, the JSON bodies of
// requests and responses, flow-control primitives and the error kinds that
// travel over the wire.
//
// Both sides import this package, so names cannot drift. It must not import
// package net (directly or transitively): the guest agent is linked
// statically even when built with cgo enabled.
//
// # Frames
//
// Every frame is a 24-byte header followed by at most MaxPayload bytes:
//
//	offset size field
//	0      4    magic "\xa5SVM"
//	4      1    type (Type)
//	5      1    channel (Channel), 0 when unused
//	6      2    reserved, must be zero
//	8      4    stream id, big endian (0 for session frames)
//	12     4    payload length, big endian, <= MaxPayload
//	16     4    CRC-32C of the payload
//	20     4    CRC-32C of header bytes 0..19
//
// The header checksum validates the length before the decoder waits for a
// payload, and the payload checksum rejects garbage, so a Decoder can skip any
// bytes that do not form a frame and find the next one.
//
// # Sessions
//
// A transport may be one endless byte stream (virtio-serial) on which host
// processes come and go. A host opens a session by writing ResyncSize zero
// bytes and a HELLO frame with a fresh random nonce; the zeros complete any
// frame a previous host left half-written, so the HELLO is always found. The
// server abandons the previous session, writes its own zero run and a
// HELLO_ACK echoing the nonce; the host ignores every byte before that ACK.
//
// # Hostile peers
//
// A decoder skips a frame whose header is valid but whose payload checksum
// fails as a whole (frames nested in its payload are never parsed), and
// refuses lengths above MaxPayload from the header alone. The host treats
// every guest frame that would cost memory outside a flow-control window as
// a protocol error ending the session: empty DATA frames, DATA on a channel
// other than ChanOut or ChanErr, data beyond the window, frame types only
// hosts send. An Inbox coalesces data per channel, so its memory is the
// window plus a constant however small the frames.
//
// # Compatibility
//
// New methods are added to Capabilities; an older agent answers them with
// ErrUnsupported. CONTROL frames (terminal resize, signals) are ignored by
// agents that predate them (capability "frame.control").
package proto
