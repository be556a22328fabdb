/// A bounded table of per-flow entries in least-recently-used order, for filters that keep state per flow tag or per
/// connection (`pcap`, `compress`). Entries are slots (`Int32`) that never move; the caller keeps what it needs per
/// entry in arrays indexed by slot. A lookup and `touch` allocate nothing; `insert` may grow the arrays (once per
/// new flow, never beyond `capacity` slots). Full: the caller ends and `remove`s the `oldest` entry first.
struct FlowLRU<Key: Hashable> {
    let capacity: Int
    private var index: [Key: Int32] = [:]
    private var keys: [Key] = []
    private var newer: [Int32] = []
    private var older: [Int32] = []
    private var free: [Int32] = []
    /// Most and least recently used entries (-1: none).
    private(set) var newest: Int32 = -1
    private(set) var oldest: Int32 = -1

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    var count: Int { index.count }
    var isFull: Bool { index.count >= capacity }
    /// Slots ever used: arrays the caller indexes by slot need this many entries.
    var slots: Int { keys.count }

    @inline(__always)
    func find(_ k: Key) -> Int32? { index[k] }

    @inline(__always)
    func key(_ s: Int32) -> Key { keys[Int(s)] }

    /// The entry used after `s` in age order (towards the newest), or -1.
    @inline(__always)
    func newer(than s: Int32) -> Int32 { newer[Int(s)] }

    /// Adds `k` (not present; the table not full) as the newest entry and returns its slot.
    mutating func insert(_ k: Key) -> Int32 {
        precondition(!isFull && index[k] == nil)
        let s: Int32
        if let f = free.popLast() {
            s = f
            keys[Int(s)] = k
        } else {
            s = Int32(keys.count)
            keys.append(k)
            newer.append(-1)
            older.append(-1)
        }
        index[k] = s
        link(s)
        return s
    }

    /// Makes `s` the newest entry.
    @inline(__always)
    mutating func touch(_ s: Int32) {
        if newest == s { return }
        unlink(s)
        link(s)
    }

    /// Forgets the entry in slot `s`; the slot is reused by a later insert.
    mutating func remove(_ s: Int32) {
        index.removeValue(forKey: keys[Int(s)])
        unlink(s)
        free.append(s)
    }

    private mutating func link(_ s: Int32) {
        older[Int(s)] = newest
        newer[Int(s)] = -1
        if newest >= 0 { newer[Int(newest)] = s }
        newest = s
        if oldest < 0 { oldest = s }
    }

    private mutating func unlink(_ s: Int32) {
        let o = older[Int(s)], n = newer[Int(s)]
        if o >= 0 { newer[Int(o)] = n } else if oldest == s { oldest = n }
        if n >= 0 { older[Int(n)] = o } else if newest == s { newest = o }
        older[Int(s)] = -1
        newer[Int(s)] = -1
    }
}
