//! The TSF reader on arbitrary bytes: header, trailer, footer index, one
//! series found by binary search, and every block of every series decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor::format::tsf::FileReader;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = FileReader::open(data) else {
        return;
    };
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    for e in r.footer().series() {
        let found = r.find(e.org_id, e.metric_id);
        assert!(found.is_some(), "a listed series is found");
        ts.clear();
        vals.clear();
        if r.read_series_into(e, &mut ts, &mut vals).is_ok() {
            assert_eq!(ts.len(), vals.len());
            assert_eq!(ts.len() as u64, e.n_points);
        }
    }
});
