//! A table indexed by UDP port: the per-packet lookups of the media path (port → stream,
//! port → socket) are one bounds-checked index instead of a hash.

/// One optional entry per port; the full 64 Ki slots are allocated on the first insert.
pub(crate) struct PortTable<T> {
    slots: Vec<Option<T>>,
}

impl<T> Default for PortTable<T> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T> PortTable<T> {
    pub(crate) fn get(&self, port: u16) -> Option<&T> {
        self.slots.get(usize::from(port))?.as_ref()
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        self.get(port).is_some()
    }

    /// Sets the entry of `port`, returning the previous one.
    pub(crate) fn insert(&mut self, port: u16, value: T) -> Option<T> {
        if self.slots.is_empty() {
            self.slots.resize_with(usize::from(u16::MAX) + 1, || None);
        }
        self.slots.get_mut(usize::from(port))?.replace(value)
    }

    pub(crate) fn remove(&mut self, port: u16) -> Option<T> {
        self.slots.get_mut(usize::from(port))?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_at_the_edges() {
        let mut t = PortTable::default();
        assert!(!t.contains(0) && t.remove(65535).is_none());
        for port in [0, 1, 40000, 65535] {
            assert_eq!(t.insert(port, u32::from(port) + 1), None);
        }
        assert_eq!(t.insert(40000, 7), Some(40001));
        assert_eq!((t.get(0), t.get(65535), t.get(40000), t.get(2)), (Some(&1), Some(&65536), Some(&7), None));
        assert_eq!(t.remove(1), Some(2));
        assert!(!t.contains(1) && t.contains(0));
    }
}
