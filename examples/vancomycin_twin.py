"""A vancomycin patient's digital twin: two levels -> posterior -> AUC-guided dose.

A 67-year-old man (82 kg, 178 cm, serum creatinine 1.3 mg/dL: Cockcroft-Gault CrCL 64 mL/min)
receives 1,000 mg over 1 h every 12 h. Two levels are drawn: a trough before the third dose
and a peak an hour after the fourth infusion ended. The twin starts from Goti et al.'s 2018
population model at his covariates (the prior), is updated with the levels (the posterior), and
recommends the dose that gives the highest posterior probability of an AUC24 of 400-600 mg*h/L
(Rybak et al. 2020) for q8h, q12h or q24h dosing. The plot shows the forecast on the current
regimen and on the recommended one.

Run: `python examples/vancomycin_twin.py` (`--draws 200` for a quicker run, `--out` for the
figure).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

import twins


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000, help="posterior draws")
    parser.add_argument("--out", type=Path, default=Path("vancomycin_twin.png"))
    args = parser.parse_args(argv)

    drug = twins.drugs.get("vancomycin_goti2018")
    patient = twins.Patient(
        id="VAN-001",
        age=67,
        sex="male",
        weight=82.0,
        height=178.0,
        labs={"serum_creatinine": 1.3},
    )
    twin = twins.DigitalTwin(drug, patient)
    given = drug.regimen(4, amount=1000.0, interval=12.0, duration=1.0)
    twin.give(given)
    prior = twin.forecast(np.linspace(0.0, 48.0, 97), n_draws=args.draws, key=jax.random.key(0))

    # Trough before the 3rd dose (23.5 h) and a level 1 h after the 4th infusion (38 h).
    twin.update(times=[23.5, 38.0], values=[8.9, 27.5])
    post = twin.posterior
    print(f"patient {patient.id}: CrCL {patient.crcl():.0f} mL/min")
    print("parameter   prior (typical)   posterior (MAP)")
    for name in ("CL", "V1", "V2"):
        print(
            f"{name:9s} {drug.typical_params(patient.covariates())[name]:12.2f} "
            f"{post.params[name]:14.2f}"
        )

    key = jax.random.key(1)
    rec = twin.recommend("AUC24", intervals=(8.0, 12.0, 24.0), key=key, n_draws=args.draws)
    print("\nrecommendation:", rec)
    print(rec.candidates.to_string(index=False))

    times = np.linspace(0.0, 48.0 + 5 * 24.0, 400)
    current = twin.forecast(
        times,
        drug.regimen(10, amount=1000.0, interval=12.0, duration=1.0, start=48.0),
        n_draws=args.draws,
        key=key,
    )
    planned = twin.forecast(times, rec.regimen, n_draws=args.draws, key=key)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13.0, 4.5), sharey=True)
    current.plot(axes[0], title="1,000 mg q12h (current)")
    planned.plot(axes[1], title=f"recommended: {rec.dose:.0f} mg q{rec.interval:g}h")
    fig.suptitle(f"{drug.name}: {patient.id}, two levels -> posterior -> AUC-guided dose")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"\nwrote {args.out}")
    return {
        "prior": prior,
        "posterior": post,
        "recommendation": rec,
        "current": current,
        "planned": planned,
    }


if __name__ == "__main__":
    main()
