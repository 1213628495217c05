//! Rating throughput (no ClickHouse needed): charge computations per second on one core,
//! beside a baseline of plain `Decimal` multiply-adds over the same quantities.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::str::FromStr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meterhouse::billing::rating::{
    DynamicAmounts, Model, PricedSample, Tier, included_share, rate,
};
use rust_decimal::Decimal;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn five_tiers() -> Vec<Tier> {
    [
        ("1000", "0.010"),
        ("10000", "0.008"),
        ("100000", "0.006"),
        ("1000000", "0.004"),
    ]
    .iter()
    .map(|(up_to, unit)| Tier {
        up_to: Some(d(up_to)),
        unit_amount: d(unit),
        flat_amount: d("1.00"),
    })
    .chain([Tier {
        up_to: None,
        unit_amount: d("0.002"),
        flat_amount: Decimal::ZERO,
    }])
    .collect()
}

fn rating(c: &mut Criterion) {
    let tiers = five_tiers();
    let quantities: Vec<Decimal> = (0..1024u64)
        .map(|i| Decimal::new((i * 7919 % 2_000_000) as i64 * 1000 + 123, 3))
        .collect();
    let mut group = c.benchmark_group("rating");
    group.throughput(Throughput::Elements(quantities.len() as u64));
    group.bench_function("graduated, 5 tiers", |b| {
        let model = Model::Graduated(&tiers);
        b.iter(|| {
            for q in &quantities {
                black_box(rate(&model, black_box(*q), 0, d_zero()).unwrap());
            }
        })
    });
    group.bench_function("volume, 5 tiers", |b| {
        let model = Model::Volume(&tiers);
        b.iter(|| {
            for q in &quantities {
                black_box(rate(&model, black_box(*q), 0, d_zero()).unwrap());
            }
        })
    });
    group.bench_function("percentage, with a fee per event", |b| {
        let model = Model::Percentage {
            rate: d("2.9"),
            fixed_amount: d("0.30"),
            free_events: 100,
        };
        b.iter(|| {
            for (i, q) in quantities.iter().enumerate() {
                black_box(rate(&model, black_box(*q), i as u64 * 37, d_zero()).unwrap());
            }
        })
    });
    group.bench_function("dynamic, from its measured amounts", |b| {
        b.iter(|| {
            for q in &quantities {
                let model = Model::Dynamic(DynamicAmounts {
                    priced: black_box(*q),
                    included: black_box(Decimal::ONE_HUNDRED),
                });
                black_box(rate(&model, black_box(*q), 0, d_zero()).unwrap());
            }
        })
    });
    group.bench_function(
        "dynamic, with the share of 52 samples' included units",
        |b| {
            // The first 100,000 units are held by the first 52 of these samples.
            let samples: Vec<PricedSample> = (0..100i64)
                .map(|i| PricedSample {
                    value: Decimal::new(1000 + i * 37, 0),
                    unit_amount: Decimal::new(2 + i % 7, 6),
                })
                .collect();
            b.iter(|| {
                for q in &quantities {
                    let included = black_box(d("100000"));
                    let share = included_share(samples.iter().copied(), included).unwrap();
                    let model = Model::Dynamic(DynamicAmounts {
                        priced: black_box(*q),
                        included: share,
                    });
                    black_box(rate(&model, black_box(*q), 0, included).unwrap());
                }
            })
        },
    );
    group.bench_function("baseline: one decimal multiply-add", |b| {
        let unit = d("0.004");
        b.iter(|| {
            for q in &quantities {
                black_box(black_box(*q) * unit + Decimal::ONE);
            }
        })
    });
    group.finish();
}

fn d_zero() -> Decimal {
    Decimal::ZERO
}

criterion_group!(benches, rating);
criterion_main!(benches);
