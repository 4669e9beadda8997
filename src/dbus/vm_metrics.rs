//! The body of `VirtualMachine.GetMetrics`: a VM's samples as the bus sends
//! them. The samples themselves are the model's (`crate::metrics`).

use crate::metrics::Sample;
use crate::model::Model;

/// One sample on the bus, `(tdttttt)`: unix time ms, CPU % of the VM's
/// vCPUs, memory used KiB, disk read, disk write, network rx, network tx
/// (bytes per second).
pub type Row = (u64, f64, u64, u64, u64, u64, u64);

/// A sample as a row.
pub fn row(s: &Sample) -> Row {
    let r = &s.rates;
    (
        s.unix_ms,
        r.cpu_percent(),
        s.memory_used_kib,
        r.disk_read_bytes_per_sec,
        r.disk_write_bytes_per_sec,
        r.net_rx_bytes_per_sec,
        r.net_tx_bytes_per_sec,
    )
}

/// The rows of the VM's last `seconds` (0: all its ring holds), oldest first.
pub fn rows(model: &Model, uuid: &str, seconds: u32) -> Vec<Row> {
    model.metrics(uuid, seconds).iter().map(row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::records::Rates;

    #[test]
    fn a_row_is_in_the_documented_order() {
        let s = Sample {
            unix_ms: 1,
            memory_used_kib: 3,
            rates: Rates {
                cpu_hundredths: 250,
                disk_read_bytes_per_sec: 4,
                disk_write_bytes_per_sec: 5,
                net_rx_bytes_per_sec: 6,
                net_tx_bytes_per_sec: 7,
            },
        };
        assert_eq!(row(&s), (1, 2.5, 3, 4, 5, 6, 7));
        let sig = <Row as zbus::Type>::SIGNATURE.to_string();
        assert_eq!(sig, "(tdttttt)");
    }
}
