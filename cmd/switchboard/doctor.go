package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/switchboard/switchboard/doctor"
)

// errFoundProblem makes the process exit non-zero without another message:
// the report already said what is wrong.
var errFoundProblem = errors.New("found a problem")

func doctorCmd() *cobra.Command {
	var cf clientFlags
	var namespace, output string
	cmd := &cobra.Command{
		Use:   "doctor [svc/NAME]",
		Short: "Explain why a Service routes or does not (all Services of the namespace without an argument)",
		Long: `doctor reads a Service, the pods of its namespace and its EndpointSlices, and explains in plain words,
most likely cause first, why the Service does or does not route: a selector typo and the pod and label it
nearly matched, pods that are not Ready and why, a targetPort no container serves, EndpointSlices that lag
behind the pods. Exit code 0 when healthy, 3 when it found a problem.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			cfg, err := cf.restConfig("doctor")
			if err != nil {
				return err
			}
			client, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			var reports []doctor.Report
			if len(args) == 1 {
				name, ok := strings.CutPrefix(args[0], "svc/")
				if !ok {
					name, ok = strings.CutPrefix(args[0], "service/")
				}
				if !ok || name == "" {
					return fmt.Errorf("argument %q: want svc/NAME", args[0])
				}
				r, err := doctor.Diagnose(cmd.Context(), client, namespace, name)
				if err != nil {
					return err
				}
				reports = []doctor.Report{r}
			} else if reports, err = doctor.DiagnoseNamespace(cmd.Context(), client, namespace); err != nil {
				return err
			}
			if output == "json" {
				err = doctor.WriteJSON(cmd.OutOrStdout(), reports)
			} else {
				err = doctor.WriteText(cmd.OutOrStdout(), reports)
			}
			if err != nil {
				return err
			}
			for _, r := range reports {
				if !r.Healthy {
					return errFoundProblem
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	cf.addTo(f, 50, 100)
	f.StringVarP(&namespace, "namespace", "n", "default", "namespace of the Service(s)")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
