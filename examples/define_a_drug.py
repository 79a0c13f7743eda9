"""Define a drug of your own in a few lines, then use it like the library's drugs.

The drug here is theophylline as Pinheiro and Bates fit it with R's nlme (`fm3Theo.nlme`: one
compartment, first-order absorption, clearance per kg of body weight), from the values in
the project's reference estimates. Unlike the library's `theophylline` (no covariates), its
clearance and volume scale with weight, so the patient's weight matters.

    python examples/define_a_drug.py --weight 85 --dose 320

References: Pinheiro JC, Bates DM. Mixed-Effects Models in S and S-PLUS. Springer, 2000,
section 8.2 (model fm3Theo.nlme); data: Boeckmann AJ, Sheiner LB, Beal SL. NONMEM Users
Guide Part V, UCSF 1994.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

import calibration
import pkpd
import twins.drugs as D

# nlme fm3Theo (R 4.2.2, nlme 3.1-162): lKe -2.4547, lKa 0.4657, lCl -3.2272 (CL per kg);
# random effects on lKa (SD 0.6436) and lCl (SD 0.1669); residual SD 0.7093 mg/L.
KE, KA, CL_PER_KG = 0.08589, 1.5932, 0.03967


def typical(theta, cov):
    """CL = CL/kg x WT; V = CL / ke."""
    cl = theta["CL_KG"] * cov["WT"]
    return {"KA": theta["KA"], "CL": cl, "V": cl / theta["KE"]}


def covariates(patient):
    """The model needs the body weight (kg) of the standard patient dict."""
    return {
        "WT": D.patient_number(patient, "WT", drug="theophylline_pinheiro2000", what="weight, kg")
    }


THEOPHYLLINE_NLME = D.Drug(
    name="theophylline_pinheiro2000",
    model=calibration.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": KA, "CL_KG": CL_PER_KG, "KE": KE},
        omega={"KA": 0.6436**2, "CL": 0.1669**2},
        error=calibration.Additive(0.7093),
        typical=typical,
    ),
    covariate_fn=covariates,
    units=D.Units(dose="mg", concentration="mg/L", observed="theophylline, mg/L"),
    dosing=D.Dosing(route=D.Oral(), amount=320.0, interval=12.0),
    reference="Pinheiro JC, Bates DM. Mixed-Effects Models in S and S-PLUS. Springer 2000, 8.2.",
    targets=D.get("theophylline").targets,
)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--weight", type=float, default=70.0, help="body weight (kg)")
    parser.add_argument("--dose", type=float, default=320.0, help="oral dose (mg)")
    parser.add_argument("--hours", type=float, default=48.0, help="simulated time (h)")
    args = parser.parse_args(argv)

    patient = {"WT": args.weight}
    times = jnp.linspace(0.0, args.hours, 481)
    out: dict[str, float] = {}
    for drug in (THEOPHYLLINE_NLME, D.get("theophylline")):
        params = drug.typical_params(patient)
        conc = np.asarray(
            pkpd.simulate(drug.model.model, params, drug.regimen(1, amount=args.dose), times)
        )
        i = int(np.argmax(conc))
        target = drug.targets[0]
        print(
            f"{drug.name:>26}: CL {params['CL']:.2f} L/h, V {params['V']:.1f} L; "
            f"Cmax {conc[i]:.2f} mg/L at {float(times[i]):.1f} h "
            f"({'within' if target.contains(conc[i]) else 'outside'} the "
            f"{target.low:g}-{target.high:g} {target.unit} target); "
            f"AUC(0-inf) = dose/CL = {args.dose / params['CL']:.1f} mg·h/L"
        )
        out[drug.name] = float(conc[i])
    return out


if __name__ == "__main__":
    main()
